//! The embedded registry: a single node's view, with nothing shared. It knows no remote
//! publishers (edges use the static origin list) and grants every claim (the hub already
//! allows one publisher per session ID on this node).

use super::{Claim, Holder, Pending, Registry};
use crate::relay::node::NodeUrl;

/// No cluster state; the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct Embedded;

impl Registry for Embedded {
    fn resolve<'a>(&'a self, _: &'a str) -> Pending<'a, Option<NodeUrl>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn claim<'a>(&'a self, _: &'a str) -> Pending<'a, Claim> {
        Box::pin(std::future::ready(Ok(Claim::Held(Holder::default()))))
    }

    fn refresh<'a>(&'a self, _: &'a str, _: &'a Holder) -> Pending<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn release<'a>(&'a self, _: &'a str, _: &'a Holder) -> Pending<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn lease(&self) -> Option<std::time::Duration> {
        None
    }
}
