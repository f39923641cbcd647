//! What the benches measure with: this process's CPU time, and how a target is reported.

/// CPU time of this process so far (Linux `/proc/self/schedstat`, ns).
pub fn cpu_time() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// A target's verdict as the benches print it.
pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}
