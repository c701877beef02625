//! The guard's fail2ban files (`deploy/guard/`): the context of their templates.
//!
//! Owns: nothing but the context. The files follow fail2ban's convention — `.local` files beside
//! the package's untouched `.conf` files (`jail.d/astrtc.local` enables the stock `[asterisk]`
//! jail, `filter.d/asterisk.local` names the log's timestamp, `action.d/nftables.local` this
//! deployment's table, `fail2ban.d/astrtc.local` the container's places) — and every value in them
//! comes from [`crate::plan::Guard`] and the spec's validated `[security]` (numbers, CIDRs, a name
//! of letters, digits, `-` and `_`), so no value can start a line, a section or a continuation.

use minijinja::context;
use minijinja::value::{Serde, Value};

use crate::plan::Plan;

/// The context of every file under `guard/`.
pub fn context(plan: &Plan) -> Value {
    context! { plan => Value::from(Serde(plan)), guard => Value::from(Serde(&plan.guard)) }
}
