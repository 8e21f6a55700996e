//! authbench: logins per second through Dovecot, as a mail login process (auth-client socket) or as a
//! mail client (IMAP AUTHENTICATE over TCP) would do them.
//!
//!   authbench socket --socket $base_dir/auth-client --tokens FILE --logins N [options]
//!   authbench imap   --port 143 --tokens FILE --logins N [options]
//!
//! options:
//!   --concurrency C   connections working at once (default 32); each has one login in flight
//!   --offset K        first line of the token file to use (default 0)
//!   --distinct D      0 (default): every login uses the next unused token (lines K..K+N, "cold");
//!                     D > 0: each login picks one of lines K..K+D at random (users logging in again)
//!   --mech M          OAUTHBEARER (default) or XOAUTH2
//!   --label L         echoed in the JSON line
//!   --timeout-secs T  stop after T seconds whatever happened (default 300)
//!
//! Socket mode: the handshake (VERSION and CPID from us first, as a login process does, then
//! VERSION/MECH/SPID/CUID/COOKIE/DONE from Dovecot: works with 2.3 and with 2.4, which waits for the
//! client's VERSION), then `AUTH <id> <mech> service=imap no-penalty resp=<base64>` per login; a failure
//! continuation (CONT) is answered with ^A, as a client does. Dovecot must run with auth_failure_delay = 0.
//! IMAP mode: one TCP connection per login from a random 127.x.y.z source (no per-IP penalty or limit),
//! greeting, `AUTHENTICATE <mech> <initial response>`, LOGOUT.
//!
//! Prints a human summary and one line `JSON {...}` with logins/s, p50/p99/max latency (ms) and the
//! counts of ok / fail / tempfail / error.

use base64::Engine as _;
use dovecot_oauth2_benches::{load_tokens, Args};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Default, Clone)]
struct Tally {
    ok: u64,
    fail: u64,
    tempfail: u64,
    error: u64,
    lat_us: Vec<u32>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.fail += o.fail;
        self.tempfail += o.tempfail;
        self.error += o.error;
        self.lat_us.extend(o.lat_us);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
    fn err(&mut self, e: String) {
        self.error += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

struct Job {
    tokens: Vec<(String, String)>,
    logins: usize,
    offset: usize,
    distinct: usize,
    mech: String,
    next: AtomicUsize,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

impl Job {
    /// The next login to do: (sequence number, user, token).
    fn take(&self) -> Option<(usize, &str, &str)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.logins {
            return None;
        }
        let idx = if self.distinct == 0 {
            self.offset + i
        } else {
            self.offset + (splitmix(i as u64) % self.distinct as u64) as usize
        };
        let (u, t) = &self.tokens[idx];
        Some((i, u, t))
    }

    /// How many distinct tokens the logins taken so far used. The n-th login's token depends on n only, so a
    /// run's tokens are also those of the first logins of any longer run with the same offset and set.
    fn tokens_used(&self) -> usize {
        let taken = self.next.load(Ordering::Relaxed).min(self.logins);
        if self.distinct == 0 {
            return taken;
        }
        let mut seen = vec![false; self.distinct];
        (0..taken).for_each(|i| seen[(splitmix(i as u64) % self.distinct as u64) as usize] = true);
        seen.iter().filter(|&&s| s).count()
    }

    fn sasl(&self, user: &str, token: &str, port: u16) -> String {
        let s = if self.mech == "XOAUTH2" {
            format!("user={user}\x01auth=Bearer {token}\x01\x01")
        } else {
            format!("n,a={user},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01")
        };
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let res = Args::parse(argv, &[]).and_then(|a| run(&mode, &a));
    if let Err(e) = res {
        eprintln!("authbench: {e}");
        std::process::exit(2);
    }
}

fn run(mode: &str, a: &Args) -> Result<(), String> {
    if mode != "socket" && mode != "imap" {
        return Err("usage: authbench socket|imap [options] (see the source header)".into());
    }
    let tokens = load_tokens(std::path::Path::new(a.req("tokens")?)).map_err(|e| format!("token file: {e}"))?;
    let logins: usize = a.num("logins", 1000)?;
    let offset: usize = a.num("offset", 0)?;
    let distinct: usize = a.num("distinct", 0)?;
    let concurrency: usize = a.num::<usize>("concurrency", 32)?.max(1);
    let timeout = Duration::from_secs(a.num("timeout-secs", 300)?);
    let mech = a.get("mech").unwrap_or("OAUTHBEARER").to_ascii_uppercase();
    let need = offset + if distinct == 0 { logins } else { distinct };
    if need > tokens.len() {
        return Err(format!("token file has {} lines, this run needs {need}", tokens.len()));
    }
    let job = Arc::new(Job { tokens, logins, offset, distinct, mech, next: AtomicUsize::new(0) });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (tally, timed_out) = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for c in 0..concurrency {
            let job = job.clone();
            match mode {
                "socket" => {
                    let path = a.req("socket").map(str::to_string);
                    set.spawn(async move {
                        match path {
                            Ok(p) => socket_worker(job, p, c).await,
                            Err(e) => Tally { first_error: Some(e), error: 1, ..Default::default() },
                        }
                    });
                }
                _ => {
                    let port: u16 = a.num("port", 143).unwrap_or(143);
                    let host = a.get("host").unwrap_or("127.0.0.1").to_string();
                    set.spawn(imap_worker(job, host, port));
                }
            }
        }
        let mut total = Tally::default();
        let all = async {
            while let Some(r) = set.join_next().await {
                if let Ok(t) = r {
                    total.merge(t);
                }
            }
        };
        let timed_out = tokio::time::timeout(timeout, all).await.is_err();
        (total, timed_out)
    });
    let secs = started.elapsed().as_secs_f64();
    let mut lat = tally.lat_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let done = tally.ok + tally.fail + tally.tempfail;
    let tokens_used = job.tokens_used();
    let rate = done as f64 / secs;
    let label = a.get("label").unwrap_or(mode);
    println!(
        "{label}: {done} logins in {secs:.2} s = {rate:.0} logins/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; ok {} fail {} tempfail {} error {}{}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        tally.ok,
        tally.fail,
        tally.tempfail,
        tally.error,
        if timed_out { " (TIMED OUT)" } else { "" }
    );
    if let Some(e) = &tally.first_error {
        println!("first error: {e}");
    }
    let j = serde_json::json!({
        "label": label, "mode": mode, "logins": done, "seconds": secs, "logins_per_sec": rate,
        "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        "ok": tally.ok, "fail": tally.fail, "tempfail": tally.tempfail, "error": tally.error,
        "concurrency": concurrency, "distinct": distinct, "offset": offset, "timed_out": timed_out,
        "tokens_used": tokens_used,
        "first_error": tally.first_error,
    });
    println!("JSON {j}");
    Ok(())
}

async fn socket_worker(job: Arc<Job>, path: String, conn_no: usize) -> Tally {
    let mut t = Tally::default();
    let sock = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            t.err(format!("connect {path}: {e}"));
            return t;
        }
    };
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    // Our VERSION and CPID first, as a login process sends them: Dovecot 2.4 sends its VERSION and then
    // waits for the client's before MECH ... DONE (2.3 sends everything at once and does not mind).
    let cpid = (std::process::id() % 100_000) * 1000 + conn_no as u32 + 1;
    if w.write_all(format!("VERSION\t1\t2\nCPID\t{cpid}\n").as_bytes()).await.is_err() {
        t.err("write failed".into());
        return t;
    }
    // The server's handshake, up to DONE.
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                t.err("auth socket closed during handshake".into());
                return t;
            }
            Ok(_) if line.starts_with("DONE") => break,
            Ok(_) => {}
        }
    }
    let mut id: u64 = 0;
    while let Some((_, user, token)) = job.take() {
        id += 1;
        let req = format!("AUTH\t{id}\t{}\tservice=imap\tno-penalty\tresp={}\n", job.mech, job.sasl(user, token, 143));
        let t0 = Instant::now();
        if w.write_all(req.as_bytes()).await.is_err() {
            t.err("write failed".into());
            return t;
        }
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => {
                    t.err("auth socket closed".into());
                    return t;
                }
                Ok(_) => {}
            }
            let mut f = line.trim_end().split('\t');
            let (kind, rid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            if rid != id.to_string() {
                continue;
            }
            match kind {
                "OK" => {
                    t.ok += 1;
                    break;
                }
                "FAIL" => {
                    if line.contains("code=temp_fail") || line.contains("\ttemp\t") {
                        t.tempfail += 1;
                    } else {
                        t.fail += 1;
                    }
                    break;
                }
                "CONT"
                    // The mechanism's error status: end the exchange as a client does (^A).
                    if w.write_all(format!("CONT\t{id}\tAQ==\n").as_bytes()).await.is_err() => {
                        t.err("write failed".into());
                        return t;
                    }
                _ => {}
            }
        }
        t.lat_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    t
}

fn random_source() -> std::net::SocketAddr {
    use rand::Rng;
    let mut g = rand::thread_rng();
    std::net::SocketAddr::from(([127, g.gen_range(1..=254), g.gen(), g.gen_range(1..=254)], 0))
}

async fn imap_worker(job: Arc<Job>, host: String, port: u16) -> Tally {
    let mut t = Tally::default();
    let addr: std::net::SocketAddr = match format!("{host}:{port}").parse() {
        Ok(a) => a,
        Err(e) => {
            t.err(format!("address: {e}"));
            return t;
        }
    };
    while let Some((_, user, token)) = job.take() {
        let t0 = Instant::now();
        match imap_login(&job, addr, user, token).await {
            Ok(v) => {
                match v {
                    Verdict::Ok => t.ok += 1,
                    Verdict::Fail => t.fail += 1,
                    Verdict::Temp => t.tempfail += 1,
                }
                t.lat_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Err(e) => t.err(e),
        }
    }
    t
}

enum Verdict {
    Ok,
    Fail,
    Temp,
}

async fn imap_login(job: &Job, addr: std::net::SocketAddr, user: &str, token: &str) -> Result<Verdict, String> {
    let s = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    s.bind(random_source()).map_err(|e| format!("bind: {e}"))?;
    let sock = s.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let io = |e: std::io::Error| e.to_string();
    r.read_line(&mut line).await.map_err(io)?;
    if !line.starts_with("* OK") {
        return Err(format!("greeting: {}", line.trim_end()));
    }
    let cmd = format!("a AUTHENTICATE {} {}\r\n", job.mech, job.sasl(user, token, addr.port()));
    w.write_all(cmd.as_bytes()).await.map_err(io)?;
    let verdict = loop {
        line.clear();
        if r.read_line(&mut line).await.map_err(io)? == 0 {
            return Err("connection closed during AUTHENTICATE".into());
        }
        if line.starts_with('+') {
            w.write_all(b"AQ==\r\n").await.map_err(io)?;
            continue;
        }
        if line.starts_with("a OK") {
            break Verdict::Ok;
        }
        if line.starts_with("a ") {
            break if line.contains("[UNAVAILABLE]") { Verdict::Temp } else { Verdict::Fail };
        }
    };
    let _ = w.write_all(b"b LOGOUT\r\n").await;
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.starts_with("b ") => break,
            Ok(_) => {}
        }
    }
    Ok(verdict)
}
