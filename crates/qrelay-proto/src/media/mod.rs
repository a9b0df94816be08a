//! Media: frames shared by the hub, codec inspection, and the FLV file format.

pub mod flv;
pub mod frame;
