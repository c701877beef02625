//! HTTP digest authentication as SIP uses it (RFC 2617 with RFC 3261 section 22): the
//! `Authorization` answering a `WWW-Authenticate` or `Proxy-Authenticate` challenge, MD5 with or
//! without `qop=auth`. Other algorithms are refused (Asterisk offers MD5).

use md5::{Digest, Md5};

fn hex_md5(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a challenge's parameter list at commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// One parameter of a `Digest` challenge, unquoted.
pub fn param(challenge: &str, name: &str) -> Option<String> {
    let rest = challenge.trim().strip_prefix("Digest")?.trim();
    split_params(rest).into_iter().find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The credentials answering `challenge` for `method` on `uri`, or `None` when the challenge
/// cannot be answered (no realm or nonce, an algorithm other than MD5).
pub fn authorization(challenge: &str, method: &str, uri: &str, user: &str, password: &str) -> Option<String> {
    let realm = param(challenge, "realm")?;
    let nonce = param(challenge, "nonce")?;
    let algorithm = param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
    if !algorithm.eq_ignore_ascii_case("MD5") {
        return None;
    }
    let ha1 = hex_md5(&format!("{user}:{realm}:{password}"));
    let ha2 = hex_md5(&format!("{method}:{uri}"));
    let opaque = param(challenge, "opaque").map(|o| format!(", opaque=\"{o}\"")).unwrap_or_default();
    let qop = param(challenge, "qop");
    if qop.as_deref().is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")) {
        let (cnonce, nc) = (crate::media::token(), "00000001");
        let response = hex_md5(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"{opaque}"
        ))
    } else {
        let response = hex_md5(&format!("{ha1}:{nonce}:{ha2}"));
        Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5{opaque}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_rfc2617_example() {
        // RFC 2617 section 3.5, with its fixed cnonce and nc.
        let ha1 = hex_md5("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = hex_md5("GET:/dir/index.html");
        let r = hex_md5(&format!("{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn challenge_parameters_and_authorization() {
        let c = r#"Digest realm="asterisk",nonce="1700000000/abc",opaque="7f",algorithm=MD5,qop="auth""#;
        assert_eq!(param(c, "realm").as_deref(), Some("asterisk"));
        assert_eq!(param(c, "nonce").as_deref(), Some("1700000000/abc"));
        let a = authorization(c, "REGISTER", "sip:localhost", "199", "pw").unwrap();
        assert!(a.contains("qop=auth") && a.contains("opaque=\"7f\"") && a.contains("username=\"199\""));
        assert!(authorization(&c.replace("MD5", "SHA-256"), "REGISTER", "sip:x", "u", "p").is_none());
        assert!(authorization("Digest nonce=\"x\"", "REGISTER", "sip:x", "u", "p").is_none());
        assert!(authorization("Basic realm=\"x\"", "REGISTER", "sip:x", "u", "p").is_none());
    }

    #[test]
    fn quoted_commas_stay_inside_their_parameter() {
        assert_eq!(param(r#"Digest realm="a,b", nonce="n""#, "nonce").as_deref(), Some("n"));
        assert_eq!(param(r#"Digest realm="a,b", nonce="n""#, "realm").as_deref(), Some("a,b"));
    }
}
