//! SIP messages as text (RFC 3261 section 7): parsing what the server sends — one WebSocket
//! message or UDP datagram each — and the few facts the user agent reads from them. Parsing never
//! panics: anything malformed is `None` and the user agent skips it.

/// The first line of a SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// A request.
    Request {
        /// Method.
        method: String,
        /// Request-URI.
        uri: String,
    },
    /// A response.
    Response {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// A parsed SIP message.
#[derive(Debug, Clone)]
pub struct SipMessage {
    /// Request or status line.
    pub start: StartLine,
    headers: Vec<(String, String)>,
    /// The body (SDP), possibly empty.
    pub body: String,
}

/// Compact header names (RFC 3261 section 7.3.3) expanded.
fn full_header_name(name: &str) -> &str {
    match name {
        "i" | "I" => "Call-ID",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "v" | "V" => "Via",
        "m" | "M" => "Contact",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        _ => name,
    }
}

impl SipMessage {
    /// Parses one message; `None` when it is not SIP (keep-alive CRLFs, garbage).
    pub fn parse(text: &str) -> Option<SipMessage> {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let first = lines.next()?;
        let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: u16 = code.parse().ok()?;
            if !(100..=699).contains(&code) {
                return None;
            }
            StartLine::Response { code, reason: reason.to_string() }
        } else {
            let mut p = first.split(' ');
            let (method, uri, version) = (p.next()?, p.next()?, p.next()?);
            if version != "SIP/2.0" || method.is_empty() {
                return None;
            }
            StartLine::Request { method: method.into(), uri: uri.into() }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let (k, v) = line.split_once(':')?;
            headers.push((full_header_name(k.trim()).to_string(), v.trim().to_string()));
        }
        let mut msg = SipMessage { start, headers, body: body.to_string() };
        if let Some(len) = msg.header("Content-Length").and_then(|l| l.parse::<usize>().ok()) {
            if len < msg.body.len() && msg.body.is_char_boundary(len) {
                msg.body.truncate(len);
            }
        }
        Some(msg)
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every header with this name, in order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Status code of a response.
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason phrase of a response (the method of a request).
    pub fn reason(&self) -> &str {
        match &self.start {
            StartLine::Response { reason, .. } => reason,
            StartLine::Request { method, .. } => method,
        }
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (n, m) = self.header("CSeq")?.split_once(' ')?;
        Some((n.trim().parse().ok()?, m.trim()))
    }

    /// The start line as a ladder entry, e.g. `401 Unauthorized` or `BYE`.
    pub fn summary(&self) -> String {
        match &self.start {
            StartLine::Response { code, reason } => {
                let method = self.cseq().map(|(_, m)| format!(" ({m})")).unwrap_or_default();
                format!("{code} {reason}{method}")
            }
            StartLine::Request { method, .. } => method.clone(),
        }
    }
}

/// The URI inside the first `<...>` of a header value (Contact, Record-Route), if well formed.
pub fn angle_uri(value: &str) -> Option<&str> {
    let start = value.find('<')? + 1;
    let len = value[start..].find('>')?;
    Some(&value[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses_with_compact_headers_and_body() {
        let m = SipMessage::parse("SIP/2.0 200 OK\r\ni: abc\r\nCSeq: 2 INVITE\r\nl: 4\r\n\r\nv=0\r\nextra").unwrap();
        assert_eq!(m.code(), Some(200));
        assert_eq!(m.header("call-id"), Some("abc"));
        assert_eq!(m.cseq(), Some((2, "INVITE")));
        assert_eq!(m.body, "v=0\r");
        assert_eq!(m.summary(), "200 OK (INVITE)");
    }

    #[test]
    fn hostile_input_is_refused_or_kept_whole_without_panicking() {
        for text in ["", "\r\n\r\n", "SIP/2.0 abc", "SIP/2.0 99999 X", "INVITE x", "SIP/2.0 200 OK\r\nno colon"] {
            assert!(SipMessage::parse(text).is_none(), "{text:?}");
        }
        // A Content-Length inside a multi-byte character, or longer than the body.
        let m = SipMessage::parse("SIP/2.0 200 OK\r\nContent-Length: 1\r\n\r\né").unwrap();
        assert_eq!(m.body, "é");
        let m = SipMessage::parse("SIP/2.0 200 OK\r\nContent-Length: 99\r\n\r\nv=0").unwrap();
        assert_eq!(m.body, "v=0");
    }

    #[test]
    fn angle_uris() {
        assert_eq!(angle_uri("\"x\" <sip:600@192.0.2.1:5060>;tag=1"), Some("sip:600@192.0.2.1:5060"));
        assert_eq!(angle_uri("x> <y"), None);
        assert_eq!(angle_uri("sip:bare"), None);
    }
}
