//! Calls placed by astrtc itself, as a browser or a desk phone places them: the proof behind
//! `astrtc verify --call` and the load of `astrtc bench calls`.
//!
//! - [`ws`]: SIP over secure WebSocket (TLS trusting the deployment's CA, the `sip` upgrade).
//! - [`sip`]: the user agent — REGISTER, OPTIONS, INVITE/ACK/BYE with digest auth, over WSS or
//!   UDP ([`sip::digest`], [`sip::message`]).
//! - [`session`]: WebRTC media with str0m (ICE, DTLS-SRTP, opus), a socket set per call or a
//!   shared [`webrtc_port`].
//! - [`rtp`]: plain RTP with G.711 µ-law for SIP phones, on a port many calls can share.
//! - [`sdp`]: the facts read from an SDP answer.
//! - [`audio`]: the tone, encoded once per run; [`stats`]: echo matching, RTT, loss, jitter.
//! - [`netif`]: this host's addresses; [`probe`]: one call end to end and its report.
//! - [`answer`]: a SIP phone that answers every call it gets and echoes it (load tests).
//! - [`udp_batch`]: `recvmmsg`/`sendmmsg` with kernel arrival times, for a port many calls share.
//! - [`webrtc_port`]: one UDP port and one future for the media of many WebRTC calls (str0m's
//!   `Rtc`s demultiplexed by source address).
//!
//! Must not: read the spec or the plan (callers pass what a call needs), keep global state (a
//! call owns its sockets and connection; what calls share is passed in as
//! [`session::SharedMedia`], a plain call's RTP port and the WebRTC calls' port included), spawn tasks or print. Nothing here panics on what the network
//! sends.

pub mod answer;
pub mod audio;
pub mod netif;
pub mod probe;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod sip;
pub mod stats;
pub mod turn;
pub mod udp_batch;
pub mod webrtc_port;
pub mod ws;

use std::time::Duration;

use tokio::sync::oneshot;

pub use probe::{call, CallFailure, CallReport, CallSetup, Leg, LegSetup};
pub use session::SharedMedia;

/// When a media session stops: it sends until `stop` fires, keeps receiving for `tail` (the
/// echoes still in flight), then returns its report.
pub struct RunPlan {
    /// Fires when the call should stop sending.
    pub stop: oneshot::Receiver<()>,
    /// How long to keep receiving after stop.
    pub tail: Duration,
    /// Give up waiting for ICE and DTLS after this long (WebRTC only; str0m never gives up).
    pub connect_timeout: Duration,
}

/// `N` random bytes from the OS; if it cannot give any, from std's per-process random hasher
/// seeds (these bytes make tags, branches and SSRCs unique — they protect nothing).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            chunk.copy_from_slice(&h.finish().to_be_bytes()[..chunk.len()]);
        }
    }
    b
}

/// A random token (16 hex digits), for tags, branches and Call-IDs.
pub fn token() -> String {
    random_bytes::<8>().iter().map(|x| format!("{x:02x}")).collect()
}
