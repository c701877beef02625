//! Parsers for `asterisk -rx` output: `module show like X`, `pjsip show endpoints`,
//! `http show status`; and for a cluster's edge, Kamailio's `kamcmd dispatcher.list`. They parse
//! rows into fields, so a check can ask "is res_srtp.so Running" instead of grepping loosely.

/// One row of `module show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRow {
    /// File name, e.g. `res_crypto.so`.
    pub name: String,
    /// Description.
    pub description: String,
    /// Use count.
    pub use_count: u32,
    /// `Running`, `Not Running`, `Declined`...
    pub status: String,
    /// Support level (`core`, `extended`, `deprecated`...).
    pub support: String,
}

/// Parses `module show [like X]`. Rows look like
/// `res_crypto.so   Cryptographic Digital Signatures   1   Running   core`.
pub fn parse_module_show(out: &str) -> Vec<ModuleRow> {
    let mut rows = Vec::new();
    for line in out.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = tokens.first() else { continue };
        if !name.ends_with(".so") || tokens.len() < 4 {
            continue;
        }
        let support = tokens[tokens.len() - 1];
        // "Not Running" is two tokens.
        let (status, count_idx) = if tokens.len() >= 5 && tokens[tokens.len() - 3] == "Not" {
            ("Not Running".to_string(), tokens.len() - 4)
        } else {
            (tokens[tokens.len() - 2].to_string(), tokens.len() - 3)
        };
        let Ok(use_count) = tokens[count_idx].parse() else {
            continue;
        };
        rows.push(ModuleRow {
            name: name.to_string(),
            description: tokens[1..count_idx].join(" "),
            use_count,
            status,
            support: support.to_string(),
        });
    }
    rows
}

/// Endpoint ids listed by `pjsip show endpoints`.
pub fn parse_endpoints(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("Endpoint:"))
        .map(str::trim_start)
        .filter(|rest| !rest.starts_with('<'))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|id| id.split('/').next().unwrap_or(id).to_string())
        .collect()
}

/// The address the HTTPS (WSS) server is bound to, from `http show status`.
pub fn parse_https_binding(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.trim().strip_prefix("HTTPS Server Enabled and Bound to ")).map(|s| s.trim().to_string())
}

/// Parses `kamcmd dispatcher.list` into (URI, FLAGS) pairs, in order. Each destination is a
/// block with a `URI: sip:…` line and, after it, a `FLAGS: …` line (`AP`: active and probed,
/// `IP`: inactive, `TP`: trying, `DX`: disabled).
pub fn parse_dispatcher_list(out: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut uri = None;
    for line in out.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("URI: ") {
            uri = Some(u.trim().to_string());
        } else if let (Some(f), Some(u)) = (line.strip_prefix("FLAGS: "), uri.take()) {
            pairs.push((u, f.trim().to_string()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_rows() {
        let out = "Module                         Description                              Use Count  Status      Support Level\n\
                   res_crypto.so                  Cryptographic Digital Signatures         1          Running              core\n\
                   res_srtp.so                    Secure RTP (SRTP)                        0          Not Running      core\n\
                   2 modules loaded\n";
        let rows = parse_module_show(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "res_crypto.so");
        assert_eq!(rows[0].status, "Running");
        assert_eq!(rows[0].description, "Cryptographic Digital Signatures");
        assert_eq!(rows[1].status, "Not Running");
        assert_eq!(rows[1].use_count, 0);
    }

    #[test]
    fn endpoints_and_https() {
        let out = "\n Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>\n\
                   ==========================\n\n Endpoint:  199/199                 Unavailable   0 of inf\n\
                   \x20    InAuth:  199-auth/199\n Endpoint:  3001                  Unavailable   0 of inf\n";
        assert_eq!(parse_endpoints(out), ["199", "3001"]);
        let http = "HTTP Server Status:\nServer Enabled and Bound to 127.0.0.1:8088\n\nHTTPS Server Enabled and Bound to 0.0.0.0:8089\n";
        assert_eq!(parse_https_binding(http).as_deref(), Some("0.0.0.0:8089"));
        assert_eq!(parse_https_binding("HTTP Server Status:\n"), None);
    }

    #[test]
    fn dispatcher_list_gives_each_destination_its_flags() {
        // As Kamailio 6.0's kamcmd prints it (two members, one inactive).
        let out = "{\n\tNRSETS: 1\n\tRECORDS: {\n\t\tSET: {\n\t\t\tID: 1\n\t\t\tTARGETS: {\n\t\t\t\tDEST: {\n\t\t\t\t\tURI: sip:172.29.0.11:5060\n\t\t\t\t\tFLAGS: AP\n\t\t\t\t\tPRIORITY: 0\n\t\t\t\t}\n\t\t\t\tDEST: {\n\t\t\t\t\tURI: sip:172.29.0.12:5060\n\t\t\t\t\tFLAGS: IP\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n}\n";
        assert_eq!(
            parse_dispatcher_list(out),
            [
                ("sip:172.29.0.11:5060".to_string(), "AP".to_string()),
                ("sip:172.29.0.12:5060".to_string(), "IP".to_string())
            ]
        );
        assert!(parse_dispatcher_list("error: 500 - command dispatcher.list not found").is_empty());
    }
}
