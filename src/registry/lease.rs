//! A local publisher's lease on its session ID, kept while it publishes: claimed before
//! the publish is accepted, refreshed every third of the lease, released when dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn, Instrument};

use super::{Claim, Holder, Registry};
use crate::reason::{Counters, Reason};

/// Held while the publish lasts; dropping it releases the lease (in the background).
#[derive(Debug)]
pub struct PublisherLease {
    _stop: Option<DropGuard>,
}

impl PublisherLease {
    /// Claims `session_id` for this node. `Err` names the node that holds it. A registry
    /// that cannot be reached does not refuse the publish (local publish never depends on
    /// it): the lease is claimed in the background once it answers.
    pub async fn acquire(
        registry: Arc<dyn Registry>,
        session_id: &str,
        counters: Arc<Counters>,
    ) -> Result<Self, String> {
        let Some(lease) = registry.lease() else { return Ok(Self { _stop: None }) };
        let held = match registry.claim(session_id).await {
            Ok(Claim::Held(holder)) => Some(holder),
            Ok(Claim::Taken(node)) => return Err(node),
            Err(e) => {
                counters.count(Reason::RegistryUnavailable);
                warn!(reason = %e, "publishing without a registry lease for now");
                None
            }
        };
        let stop = CancellationToken::new();
        let keeper = keep(registry, session_id.to_owned(), lease, held, stop.clone(), counters);
        tokio::spawn(keeper.in_current_span());
        Ok(Self { _stop: Some(stop.drop_guard()) })
    }
}

/// Refreshes (or, after an outage, claims) the lease until `stop`, then releases it.
async fn keep(
    registry: Arc<dyn Registry>,
    session_id: String,
    lease: Duration,
    mut held: Option<Holder>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    // A failure is logged when it starts, not on every beat of an outage.
    let mut failing = held.is_none();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(lease / 3) => {}
        }
        let result = match &held {
            Some(holder) => registry.refresh(&session_id, holder).await.map(|ours| {
                if ours {
                    Claim::Held(holder.clone())
                } else {
                    Claim::Taken(String::new())
                }
            }),
            None => registry.claim(&session_id).await,
        };
        match result {
            Ok(Claim::Held(holder)) => {
                if failing {
                    info!("registry lease held again");
                }
                (held, failing) = (Some(holder), false);
            }
            // Expired while unrefreshed (an outage longer than the lease), or claimed by
            // a publisher that replaced this one: claim it anew (the claim says who has it).
            Ok(Claim::Taken(node)) if node.is_empty() => held = None,
            Ok(Claim::Taken(node)) => {
                if !failing {
                    counters.count(Reason::LeaseLost);
                    warn!(%node, "registry lease lost: another node holds this session ID");
                }
                (held, failing) = (None, true);
            }
            Err(e) => {
                if !failing {
                    counters.count(Reason::RegistryUnavailable);
                    warn!(reason = %e, "registry lease not refreshed");
                }
                failing = true;
            }
        }
    }
    if let Some(holder) = held {
        if let Err(e) = registry.release(&session_id, &holder).await {
            // It expires on its own within the lease.
            warn!(reason = %e, "registry lease not released");
        }
    }
}
