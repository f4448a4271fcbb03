//! Black-box tests of the relay: the real binary on a free loopback port,
//! driven by the fleet simulator built from the shared real data.
//!
//! One test binary on purpose: each extra binary links the whole crate again.

mod api;
mod assessment;
mod backup;
mod courier;
mod crash;
mod errors;
mod hostile;
mod mdns;
mod schemathesis;
mod security;
mod support;
mod webhook_crash;
mod webhook_netns;
mod webhooks;
