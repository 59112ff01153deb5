//! A fault-injecting HTTP proxy for registry tests: it listens on 127.0.0.1,
//! forwards every request to a real registry, and by [`Rule`]s (method, path
//! regex, which occurrences) answers with a [`Fault`] instead: an error status,
//! a 429 with `Retry-After`, a connection reset or a truncated body mid-blob,
//! corrupted bytes, a slow response, a 401 as when a token expires.
//!
//! Started with [`FaultProxy::start_with_tokens`], it also stands in for the
//! token service of registries such as Docker Hub, GHCR or Harbor: `GET /token`
//! issues a bearer token for the `scope` asked (checking basic credentials if
//! given), and every other request without `Authorization: Bearer <a token it
//! issued for that repository>` is answered 401 with a `WWW-Authenticate:
//! Bearer` challenge, before any rule; authorized requests are forwarded
//! without their `Authorization` header.
//!
//! Each request is forwarded on its own upstream connection and the response
//! is read whole before it is (perhaps damaged and) sent back, so it is meant
//! for small test images, not for gigabyte blobs. Every request is recorded
//! ([`FaultProxy::seen`]) so tests can assert retries and their timing.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regex::Regex;

/// What the proxy does instead of (or to) the real response.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status and an empty body (500, 502, 503 …).
    Status(u16),
    /// 429 Too Many Requests with `Retry-After: secs`.
    TooManyRequests { retry_after: u64 },
    /// 429 Too Many Requests with `Retry-After` as an HTTP-date at least `secs` ahead
    /// (the next whole second after now + secs).
    TooManyRequestsUntil { secs: u64 },
    /// 401 with a `WWW-Authenticate` challenge (Basic, or Bearer behind the token
    /// front), as a registry answers an expired token.
    Unauthorized,
    /// Forward, then send the headers and half the body and reset the connection (RST).
    ResetMidBody,
    /// Forward, then send the headers (full length) and half the body and close (FIN).
    Truncate,
    /// Forward, with one byte in the middle of the body flipped.
    Corrupt,
    /// Forward, sending the body at this many bytes per second.
    Slow { bytes_per_sec: u64 },
    /// Forward, after waiting this long.
    Delay(Duration),
}

/// Which requests a rule applies to, and to which of their occurrences.
#[derive(Debug, Clone)]
pub struct Rule {
    method: Option<String>,
    path: Regex,
    /// 1-based occurrences of matching requests to fault; empty means all.
    occurrences: Vec<usize>,
    fault: Fault,
    matched: usize,
    /// Behind the token front: revoke every token issued so far when this rule faults.
    revokes_tokens: bool,
}

impl Rule {
    /// A rule for `method` (any with `*`) on paths matching `path_regex`; faults every match
    /// unless narrowed with [`Rule::nth`] or [`Rule::first`].
    pub fn new(method: &str, path_regex: &str, fault: Fault) -> Rule {
        Rule {
            method: (method != "*").then(|| method.to_string()),
            path: Regex::new(path_regex).expect("valid path regex"),
            occurrences: Vec::new(),
            fault,
            matched: 0,
            revokes_tokens: false,
        }
    }

    /// Also revoke every token issued so far (as if they expired) each time the
    /// rule faults, so the next request with one is refused.
    pub fn revoking_tokens(mut self) -> Rule {
        self.revokes_tokens = true;
        self
    }

    /// Only the given occurrences (1-based) of matching requests.
    pub fn nth(mut self, occurrences: &[usize]) -> Rule {
        self.occurrences = occurrences.to_vec();
        self
    }

    /// Only the first `n` matching requests.
    pub fn first(self, n: usize) -> Rule {
        let all: Vec<usize> = (1..=n).collect();
        self.nth(&all)
    }

    fn applies(&mut self, method: &str, path: &str) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) || !self.path.is_match(path) {
            return false;
        }
        self.matched += 1;
        self.occurrences.is_empty() || self.occurrences.contains(&self.matched)
    }
}

/// One request the proxy saw, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// When the request head was read.
    pub at: Instant,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// The status sent back (the upstream one unless a fault replaced it); 0 if none.
    pub status: u16,
    /// Request body length.
    pub body_len: usize,
    /// The scheme of the request's `Authorization` header (`Basic`, `Bearer`), if any.
    pub auth_scheme: Option<String>,
}

/// The bearer-token front: who may have a token, and the tokens issued.
struct TokenFront {
    /// The `Authorization` value `GET /token` wants (`Basic …`); None: anyone gets a token.
    basic: Option<String>,
    /// Tokens issued, with the repository and actions each was granted.
    issued: Mutex<Vec<Grant>>,
}

struct Grant {
    token: String,
    repository: String,
    push: bool,
    revoked: bool,
}

struct Shared {
    addr: String,
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    tokens: Option<TokenFront>,
}

/// The proxy; stopped when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`, to use as the registry host in image references.
    pub addr: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`host:port`) with no rules.
    pub fn start(upstream: &str) -> FaultProxy {
        Self::start_inner(upstream, None)
    }

    /// Starts a proxy that also asks for bearer tokens, as Docker Hub does (see
    /// the module comment); with `credentials` (user, password) its token
    /// service wants them, as a private registry's does.
    pub fn start_with_tokens(upstream: &str, credentials: Option<(&str, &str)>) -> FaultProxy {
        use base64::Engine;
        let basic = credentials.map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        });
        Self::start_inner(upstream, Some(TokenFront { basic, issued: Mutex::default() }))
    }

    fn start_inner(upstream: &str, tokens: Option<TokenFront>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            upstream: upstream.to_string(),
            rules: Mutex::default(),
            seen: Mutex::default(),
            tokens,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (shared2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let shared = shared2.clone();
                std::thread::spawn(move || serve(client, &shared));
            }
        });
        FaultProxy { addr, shared, stop, thread: Some(thread) }
    }

    /// Adds a rule; rules are tried in the order added, the first that applies wins.
    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// Removes every rule and forgets the requests seen.
    pub fn reset(&self) {
        self.shared.rules.lock().unwrap().clear();
        self.shared.seen.lock().unwrap().clear();
    }

    /// The requests seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The bearer tokens issued so far (none without the token front).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .tokens
            .as_ref()
            .map_or(Vec::new(), |f| f.issued.lock().unwrap().iter().map(|g| g.token.clone()).collect())
    }

    /// The requests seen whose method is `method` and path matches `path_regex`.
    pub fn seen_matching(&self, method: &str, path_regex: &str) -> Vec<Seen> {
        let re = Regex::new(path_regex).expect("valid path regex");
        self.seen().into_iter().filter(|s| (method == "*" || s.method == method) && re.is_match(&s.path)).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A parsed HTTP message head: first line and headers.
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Head { line: line.trim_end().to_string(), headers })
}

/// Reads a body framed by Content-Length or chunked encoding; `to_eof` reads
/// a body delimited by the connection's end (responses only).
fn read_body(r: &mut impl BufRead, head: &Head, to_eof: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                // Trailers end with an empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = head.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Serves one client connection, request after request.
fn serve(client: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(client.try_clone().expect("clone client socket"));
    let mut client = client;
    while let Some(head) = read_head(&mut reader) {
        let at = Instant::now();
        let Ok(body) = read_body(&mut reader, &head, false) else {
            return;
        };
        let mut parts = head.line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut seen = Seen {
            method: method.clone(),
            path: path.clone(),
            at,
            fault: None,
            status: 0,
            body_len: body.len(),
            auth_scheme: head.header("authorization").and_then(|v| v.split_whitespace().next()).map(str::to_string),
        };
        if let Some(front) = &shared.tokens {
            // The token service, and the 401s of the registry behind it, come before any rule.
            let answered = if path.starts_with("/token") {
                Some(issue_token(&mut client, front, &head, &path, seen.clone(), &shared.seen))
            } else if !front.admits(&head, &method, &path) {
                let challenge = [("WWW-Authenticate", bearer_challenge(shared))];
                Some(reply_empty(&mut client, 401, &challenge, seen.clone(), &shared.seen))
            } else {
                None
            };
            match answered {
                Some(true) => continue,
                Some(false) => return,
                None => {}
            }
        }
        let (fault, revoke) = shared
            .rules
            .lock()
            .unwrap()
            .iter_mut()
            .find_map(|r| r.applies(&method, &path).then(|| (r.fault.clone(), r.revokes_tokens)))
            .unzip();
        if revoke == Some(true)
            && let Some(front) = &shared.tokens
        {
            front.issued.lock().unwrap().iter_mut().for_each(|g| g.revoked = true);
        }
        seen.fault = fault.clone();
        let keep = match &fault {
            Some(Fault::Status(code)) => reply_empty(&mut client, *code, &[], seen, &shared.seen),
            Some(Fault::TooManyRequests { retry_after }) => {
                reply_empty(&mut client, 429, &[("Retry-After", retry_after.to_string())], seen, &shared.seen)
            }
            Some(Fault::TooManyRequestsUntil { secs }) => {
                reply_empty(&mut client, 429, &[("Retry-After", http_date_after(*secs))], seen, &shared.seen)
            }
            Some(Fault::Unauthorized) => {
                let challenge = match shared.tokens {
                    Some(_) => bearer_challenge(shared),
                    None => "Basic realm=\"strata-test\"".to_string(),
                };
                reply_empty(&mut client, 401, &[("WWW-Authenticate", challenge)], seen, &shared.seen)
            }
            _ => {
                if let Some(Fault::Delay(d)) = &fault {
                    std::thread::sleep(*d);
                }
                match forward(&shared.upstream, &head, &body, shared.tokens.is_some()) {
                    Some((resp, resp_body)) => {
                        send_response(&mut client, &method, resp, resp_body, fault.as_ref(), seen, &shared.seen)
                    }
                    None => {
                        reply_empty(&mut client, 502, &[], seen, &shared.seen);
                        false
                    }
                }
            }
        };
        if !keep {
            return;
        }
    }
}

impl TokenFront {
    /// Whether the request carries a token issued for its repository, with
    /// push rights if it writes; `/v2/` itself takes any token issued.
    fn admits(&self, head: &Head, method: &str, path: &str) -> bool {
        let Some(token) = head.header("authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let path = path.split('?').next().unwrap_or("");
        let repository = ["/blobs/", "/manifests/", "/tags/"]
            .iter()
            .find_map(|sep| path.strip_prefix("/v2/").and_then(|p| p.split_once(sep)).map(|(repo, _)| repo));
        let writes = !matches!(method, "GET" | "HEAD");
        self.issued.lock().unwrap().iter().any(|g| {
            g.token == token.trim()
                && !g.revoked
                && match repository {
                    Some(repo) => g.repository == repo && (g.push || !writes),
                    None => path == "/v2/",
                }
        })
    }
}

/// `WWW-Authenticate` for a request without a valid token.
fn bearer_challenge(shared: &Shared) -> String {
    format!("Bearer realm=\"http://{}/token\",service=\"faultproxy\"", shared.addr)
}

/// Answers `GET /token?scope=repository:NAME:ACTIONS&service=…` with a new
/// token for that scope, as JSON; 401 without the credentials the front wants.
fn issue_token(
    client: &mut TcpStream,
    front: &TokenFront,
    head: &Head,
    path: &str,
    seen: Seen,
    log: &Mutex<Vec<Seen>>,
) -> bool {
    if front.basic.as_deref().is_some_and(|want| head.header("authorization") != Some(want)) {
        let challenge = [("WWW-Authenticate", "Basic realm=\"faultproxy\"".to_string())];
        return reply_empty(client, 401, &challenge, seen, log);
    }
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let scope = query.split('&').find_map(|kv| kv.strip_prefix("scope=")).map(percent_decode).unwrap_or_default();
    // repository:NAME:ACTIONS, NAME possibly holding no colon but slashes.
    let mut parts = scope.splitn(2, ':').nth(1).unwrap_or("").rsplitn(2, ':');
    let actions = parts.next().unwrap_or("");
    let repository = parts.next().unwrap_or("").to_string();
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let token = format!("fptoken{:x}n{}", nanos, NEXT.fetch_add(1, Ordering::SeqCst));
    let push = actions.split(',').any(|a| a == "push");
    front.issued.lock().unwrap().push(Grant { token: token.clone(), repository, push, revoked: false });
    let body = format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#);
    record(seen, 200, log);
    let out =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    client.write_all(out.as_bytes()).is_ok()
}

/// `%XX` escapes and `+` decoded (query values).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten();
        match escaped.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP-date (IMF-fixdate) at least `secs` from now: the next whole second after now + secs.
fn http_date_after(secs: u64) -> String {
    let at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() + secs + 1;
    chrono::DateTime::from_timestamp(at as i64, 0).expect("a date").format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Records `seen` with `status` before answering, so a client that has its answer finds its request recorded.
fn record(mut seen: Seen, status: u16, log: &Mutex<Vec<Seen>>) {
    seen.status = status;
    log.lock().unwrap().push(seen);
}

fn reply_empty(
    client: &mut TcpStream,
    code: u16,
    extra: &[(&str, String)],
    seen: Seen,
    log: &Mutex<Vec<Seen>>,
) -> bool {
    record(seen, code, log);
    let mut out = format!("HTTP/1.1 {code} {}\r\nContent-Length: 0\r\n", reason(code));
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    client.write_all(out.as_bytes()).is_ok()
}

fn reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

/// Sends the request upstream on a fresh connection and reads the whole response;
/// `strip_auth`: without its `Authorization` header (the token front's own).
fn forward(upstream: &str, head: &Head, body: &[u8], strip_auth: bool) -> Option<(Head, Vec<u8>)> {
    let mut server = TcpStream::connect(upstream).ok()?;
    let mut out = format!("{}\r\n", head.line);
    for (k, v) in &head.headers {
        // The Host header is kept, so upload `Location`s the registry builds point back at us.
        let k_lower = k.to_ascii_lowercase();
        if ["connection", "transfer-encoding", "content-length"].contains(&k_lower.as_str())
            || (strip_auth && k_lower == "authorization")
        {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n");
    let has_body =
        !body.is_empty() || head.header("content-length").is_some() || head.header("transfer-encoding").is_some();
    if has_body {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    server.write_all(out.as_bytes()).ok()?;
    server.write_all(body).ok()?;
    let mut r = BufReader::new(server);
    let resp = read_head(&mut r)?;
    let method_is_head = head.line.starts_with("HEAD ");
    let code: u16 = resp.line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let resp_body =
        if method_is_head || code == 204 || code == 304 { Vec::new() } else { read_body(&mut r, &resp, true).ok()? };
    Some((resp, resp_body))
}

/// Sends the upstream response, damaged as `fault` says; false when the connection must close.
fn send_response(
    client: &mut TcpStream,
    method: &str,
    resp: Head,
    mut body: Vec<u8>,
    fault: Option<&Fault>,
    seen: Seen,
    log: &Mutex<Vec<Seen>>,
) -> bool {
    record(seen, resp.line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), log);
    let mut out = format!("{}\r\n", resp.line);
    for (k, v) in &resp.headers {
        let lk = k.to_ascii_lowercase();
        if lk == "connection" || lk == "transfer-encoding" || (lk == "content-length" && method != "HEAD") {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "HEAD" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    if client.write_all(out.as_bytes()).is_err() {
        return false;
    }
    let half = body.len() / 2;
    match fault {
        Some(Fault::Corrupt) if !body.is_empty() => {
            body[half] ^= 0xff;
            client.write_all(&body).is_ok()
        }
        Some(Fault::Truncate) => {
            let _ = client.write_all(&body[..half]);
            let _ = client.flush();
            let _ = client.shutdown(Shutdown::Both);
            false
        }
        Some(Fault::ResetMidBody) => {
            let _ = client.write_all(&body[..half]);
            reset(client);
            false
        }
        Some(Fault::Slow { bytes_per_sec }) => {
            let step = (*bytes_per_sec as usize / 10).max(1);
            for piece in body.chunks(step) {
                if client.write_all(piece).is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            true
        }
        _ => client.write_all(&body).is_ok(),
    }
}

/// Makes the close of `s` a TCP reset (linger on, zero timeout); the reset
/// is sent when the connection's last descriptor is dropped.
fn reset(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Read);
}
