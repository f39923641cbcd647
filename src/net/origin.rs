//! Where a browser request comes from. Endpoints that change state (the silences API, the
//! console's forms) accept a request only when its `Host` is one this daemon answers to (a
//! DNS-rebinding page names its own domain) and, when a browser says where it was sent from,
//! only from the same origin.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

/// `Host` is an IP address, `localhost`, or an allowed name (any port); absent is accepted
/// (HTTP/1.0 clients; browsers always send it).
pub fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The host of `host[:port]` or `[v6]:port`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A request without `Origin` (curl, the CLI) passes; with one, it must name the same host
/// and port as `Host`. `Sec-Fetch-Site` (sent by browsers) must not say another site.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| {
        if a.starts_with('[') && !a.contains("]:") || !a.starts_with('[') && !a.contains(':') {
            format!("{a}:{default_port}")
        } else {
            a.to_owned()
        }
    };
    with_port(authority).eq_ignore_ascii_case(&with_port(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hosts_that_a_rebinding_page_cannot_name() {
        let allowed = vec!["auditwatch.auditwatch.svc".to_owned()];
        for (host, ok) in [
            ("127.0.0.1:9095", true),
            ("[::1]:9095", true),
            ("10.2.3.4", true),
            ("localhost:9095", true),
            ("auditwatch.auditwatch.svc:9095", true),
            ("AUDITWATCH.auditwatch.svc", true),
            ("evil.example.com:9095", false),
            ("127.0.0.1.nip.io:9095", false),
        ] {
            assert_eq!(
                host_allowed(&headers(&[("host", host)]), &allowed),
                ok,
                "{host}"
            );
        }
    }

    #[test]
    fn only_same_origin_browser_requests() {
        for (pairs, ok) in [
            (vec![("host", "127.0.0.1:9095")], true),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("origin", "http://127.0.0.1:9095"),
                ],
                true,
            ),
            (
                vec![("host", "localhost"), ("origin", "http://localhost:80")],
                true,
            ),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("origin", "http://evil.example"),
                ],
                false,
            ),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("origin", "https://127.0.0.1:9095"),
                ],
                true,
            ),
            (vec![("host", "127.0.0.1:9095"), ("origin", "null")], false),
            (
                vec![("host", "127.0.0.1:9095"), ("sec-fetch-site", "cross-site")],
                false,
            ),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("sec-fetch-site", "same-origin"),
                ],
                true,
            ),
        ] {
            assert_eq!(same_origin(&headers(&pairs)), ok, "{pairs:?}");
        }
    }
}
