//! The streaming server: Exec, Attach and PortForward hand out a URL on it
//! (`http://<addr>:<port>/{exec,attach,portforward}/<token>`), and the client (kubelet's proxy, crictl,
//! kubectl through the API server) upgrades an HTTP connection there to SPDY/3.1 or to a WebSocket.
//!
//! - [`tokens`]: single-use tokens, valid a minute, bounded in number.
//! - [`http`]: the listener (plain or TLS), the routes, the upgrade and protocol negotiation.
//! - [`spdy`]: the SPDY/3.1 session; [`websocket`]: the channel protocols over a WebSocket.
//! - [`remotecommand`]: exec/attach streams whatever the transport, and the status at the end.
//! - [`ops`]: exec (the exec helper, pipes or a pty) and attach (the pod's monitor); [`portforward`].

pub mod http;
pub mod ops;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod tokens;
pub mod websocket;

pub use http::Streaming;
pub use tokens::Pending;
