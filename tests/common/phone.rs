//! A SIP phone for tests (baresip, run inside a [`Peer`]'s namespace) and a capture of a peer's
//! link (tcpdump), with what cleartext SIP in a capture looks like: shared by the security audit
//! (one Asterisk) and the cluster tests (the edge).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::attacker::Peer;

/// A baresip run inside `peer`: registers `user` over `transport` and calls `target` for
/// `seconds`. Returns its log and whether the call was established.
pub struct Phone<'a> {
    /// Where it runs.
    pub peer: &'a Peer,
    /// The endpoint it registers as.
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
    /// The deployment's port for `transport`, at the peer's server address.
    pub server_port: u16,
    /// `udp` or `tls` (then with SRTP required: `mediaenc=srtp-mand`).
    pub transport: &'a str,
    /// The deployment's CA certificate.
    pub ca: &'a Path,
    /// Where its configuration, log and received audio go.
    pub dir: &'a Path,
}

impl Phone<'_> {
    /// Registers, calls `target` and hangs up after `seconds`: its log and whether the call was
    /// established.
    pub fn call(&self, target: &str, seconds: u32) -> (String, bool) {
        let out = self
            .baresip(&["-t", &seconds.to_string(), "-e", &format!("/dial sip:{target}@localhost")])
            .output()
            .unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let established = log.contains("Call established");
        (log, established)
    }

    /// Registers and answers whatever call comes for `seconds` (started, not waited for: its
    /// output is piped, read it with `wait_with_output`).
    pub fn answer(&self, seconds: u32) -> std::process::Child {
        self.baresip(&["-t", &seconds.to_string()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// Ends an [`Phone::answer`]ing baresip (SIGTERM: it unregisters and exits, its output
    /// flushed) and returns its log.
    pub fn stop(child: std::process::Child) -> String {
        // SAFETY: SIGTERM to the baresip this phone started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// baresip with this phone's configuration (written into `dir`; the audio it receives goes
    /// to `dir/baresip-audio`) and `args`.
    fn baresip(&self, args: &[&str]) -> Command {
        let cfg = self.dir.join("baresip");
        std::fs::create_dir_all(&cfg).unwrap();
        let snd = audio_dir(self.dir);
        let srtp = if self.transport == "tls" { "module srtp.so\n" } else { "" };
        std::fs::write(
            cfg.join("config"),
            format!(
                "poll_method epoll\nsip_listen {ip}:{port}\nsip_cafile {ca}\naudio_player aubridge,nil\n\
                 audio_source ausine,440\naudio_alert aubridge,nil\nausrc_srate 48000\nauplay_srate 48000\n\
                 ausrc_channels 2\nauplay_channels 2\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\n\
                 module ausine.so\nmodule aubridge.so\nmodule sndfile.so\n{srtp}module_app account.so\n\
                 module_app menu.so\nsnd_path {snd}\n",
                ip = self.peer.ip,
                port = 5080,
                ca = self.ca.display(),
                snd = snd.display(),
            ),
        )
        .unwrap();
        let media = if self.transport == "tls" { ";mediaenc=srtp-mand" } else { "" };
        std::fs::write(
            cfg.join("accounts"),
            format!(
                "<sip:{user}@localhost;transport={t}>;auth_pass={pw};outbound=\"sip:{server}:{port};transport={t}\"\
                 {media};answermode=auto;regint=60\n",
                user = self.user,
                t = self.transport,
                pw = self.password,
                server = self.peer.server,
                port = self.server_port,
            ),
        )
        .unwrap();
        std::fs::write(cfg.join("contacts"), "").unwrap();
        let mut command = self.peer.command("baresip");
        command.arg("-f").arg(&cfg).args(args).stdin(Stdio::null());
        command
    }
}

/// Where baresip should dump the audio of a run whose files go to `dir`: a new, short directory
/// under the system's temporary directory, which `dir/baresip-audio` links to (replacing what an
/// earlier run left there).
///
/// Not `dir/baresip-audio` itself: baresip 1.0's sndfile module builds each file's path in a
/// 128-byte buffer and silently cuts what is longer, so under a deep checkout (CI's) the dumps of
/// a call lost their `-dec.wav` ending, both went to one cut name, and the test read that as
/// "nothing decoded" (stop 24's test 18, on both phones).
pub fn audio_dir(dir: &Path) -> std::path::PathBuf {
    let link = dir.join("baresip-audio");
    std::fs::create_dir_all(dir).unwrap();
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link).unwrap(),
        Ok(_) => {
            // An earlier run's link: its directory goes with it (only one this function made).
            if let Ok(old) = std::fs::read_link(&link) {
                let ours = old.parent() == Some(std::env::temp_dir().as_path())
                    && old.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snd"));
                if ours {
                    let _ = std::fs::remove_dir_all(&old);
                }
            }
            std::fs::remove_file(&link).unwrap()
        }
        Err(_) => {}
    }
    let short = tempfile::Builder::new().prefix("snd").tempdir().unwrap().keep();
    // The dump's path: this directory, "/dump-YYYY-MM-DD-hh-mm-ss-dec.wav" (33 bytes), a NUL.
    assert!(
        short.as_os_str().len() + 33 < 128,
        "{} is too long a directory for baresip's audio dumps (128 bytes with the file name)",
        short.display()
    );
    std::os::unix::fs::symlink(&short, &link).unwrap();
    short
}

/// The lines of a baresip log that say what happened to a call's media (its streams, SRTP, first
/// packets, the end and its duration), without the status line it redraws.
/// A line repeated (baresip logs every packet it cannot decrypt) is shown once, with its count.
pub fn media_lines(log: &str) -> String {
    let mut lines: Vec<(String, usize)> = Vec::new();
    for line in log.split(['\n', '\r']).map(without_colours).filter(|l| !l.contains("(bit/s)")).filter(|l| {
        let lower = l.to_lowercase();
        ["stream:", "srtp", "audio:", "call ", "rtp", "terminated", "ice", "error", "warning", "fail"]
            .iter()
            .any(|k| lower.contains(k))
    }) {
        match lines.last_mut() {
            Some((last, n)) if *last == line => *n += 1,
            _ => lines.push((line, 1)),
        }
    }
    lines.iter().map(|(l, n)| if *n > 1 { format!("{l} (x{n})") } else { l.clone() }).collect::<Vec<_>>().join("\n")
}

/// One line on a call's media from a baresip log: the SRTP suite, where RTP first came from,
/// how the call ended and how many lines reported an error, a failure or a warning (the first
/// one quoted).
pub fn media_summary(log: &str) -> String {
    let lines: Vec<String> = log.split(['\n', '\r']).map(without_colours).collect();
    let find = |key: &str| lines.iter().find(|l| l.contains(key)).map(|l| l.trim().to_string());
    let after = |line: Option<String>, key: &str| {
        line.map(|l| l.split_once(key).map_or(l.clone(), |(_, rest)| rest.trim().to_string()))
    };
    let errors: Vec<&String> =
        lines.iter().filter(|l| ["error", "fail", "warning"].iter().any(|k| l.to_lowercase().contains(k))).collect();
    format!(
        "established {}; SRTP {}; RTP in {}; ended {}; {} error/warning line(s){}",
        lines.iter().any(|l| l.contains("Call established")),
        after(find("SRTP is Enabled"), "SRTP is Enabled").unwrap_or_else(|| "off".into()),
        after(find("incoming rtp for"), "receiving from").unwrap_or_else(|| "never".into()),
        after(find(" terminated "), " terminated ").unwrap_or_else(|| "-".into()),
        errors.len(),
        errors.first().map(|e| format!(", first: {}", e.trim())).unwrap_or_default(),
    )
}

/// `line` without its terminal colour sequences (ESC `[` ... `m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A capture of `filter` on the link to `peer`, as tcpdump writes it.
pub struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    /// Starts capturing; returns once tcpdump writes its file.
    pub fn start(peer: &Peer, filter: &str, file: std::path::PathBuf) -> Capture {
        let _ = std::fs::remove_file(&file);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let child = Command::new("tcpdump")
            .args(["-i", peer.link(), "-U", "-n", "-s", "0", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !file.exists() {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        Capture { child, file }
    }

    /// Stops the capture; the file's bytes and the number of packets in it.
    pub fn finish(mut self) -> (Vec<u8>, usize) {
        self.stop();
        let bytes = std::fs::read(&self.file).unwrap();
        (bytes, packets_in(&self.file, ""))
    }

    /// Stops the capture; the number of its packets each of `filters` (tcpdump's syntax) matches.
    pub fn finish_counting(mut self, filters: &[&str]) -> Vec<usize> {
        self.stop();
        filters.iter().map(|f| packets_in(&self.file, f)).collect()
    }

    fn stop(&mut self) {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: SIGINT to the tcpdump this capture started, so it flushes and closes the file.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// The packets of a capture file that `filter` matches (all when empty).
fn packets_in(file: &Path, filter: &str) -> usize {
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-n", "-r"]).arg(file);
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let out = cmd.stderr(Stdio::null()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a SIP message in the clear would show in a capture.
pub const CLEARTEXT_SIP: &[&str] = &["SIP/2.0", "REGISTER sip:", "INVITE sip:", "Digest ", "m=audio", "a=crypto"];

/// Which of [`CLEARTEXT_SIP`] appear in `bytes`.
pub fn cleartext_in(bytes: &[u8]) -> Vec<&'static str> {
    CLEARTEXT_SIP.iter().copied().filter(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes())).collect()
}
