//! profile-engine: runs the engine's per-login path in a loop, for `valgrind --tool=callgrind`.
//!
//!   profile-engine --mode warm|cold-userinfo|cold-introspect|jwt [--logins N] [--stub PATH]
//!
//! warm: one token, cache hits (after the first); cold-*: N distinct tokens against the stub;
//! jwt: N distinct RS256 tokens, local validation (keys fetched once).
use dovecot_oauth2::Verdict;
use dovecot_oauth2_benches::{bench_user, engine, unix_now, Args, SigningKey, StubProcess};
use std::time::Instant;

fn main() {
    let a = Args::parse(std::env::args().skip(1), &[]).unwrap_or_else(|e| panic!("{e}"));
    let mode = a.get("mode").unwrap_or("warm").to_string();
    let n: usize = a.num("logins", 20000).unwrap();
    let exe = a
        .get("stub")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("idp-stub"));
    let key = SigningKey::generate("RS256");
    let now = unix_now();
    let tokens: Vec<(String, String)> = (0..n)
        .map(|i| {
            let u = bench_user(i % 1000);
            let t = if mode == "jwt" {
                key.mint("https://idp.bench.test", "urn:dovecot", &u, i, now, 3600)
            } else {
                format!("tok_{i:08}_x")
            };
            (u, t)
        })
        .collect();
    let stub = StubProcess::start(&exe, &tokens, &[&key]);
    let conf = match mode.as_str() {
        "cold-introspect" => format!("introspection_url = {}\nintrospection_mode = post\n", stub.url("/introspect")),
        "jwt" => format!(
            "introspection_mode = local\njwks_url = {}=https://idp.bench.test\nissuers = https://idp.bench.test\naudience = urn:dovecot\n",
            stub.url("/jwks")
        ),
        _ => format!("introspection_url = {}\nintrospection_mode = auth\n", stub.url("/userinfo")),
    };
    let e = engine(&conf);
    let t0 = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        let (u, t) = if mode == "warm" { &tokens[0] } else { &tokens[i] };
        if matches!(e.verify(u, t.as_bytes()).verdict, Verdict::Accept(_)) {
            ok += 1;
        }
    }
    let el = t0.elapsed();
    println!("{mode}: {ok}/{n} accepted, {:.1} us per login", el.as_secs_f64() * 1e6 / n as f64);
}
