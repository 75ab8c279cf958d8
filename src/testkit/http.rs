//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`, enough to see
//! whether a local server answers and to make a few plain requests in tests. One
//! request per connection (`Connection: close`); no TLS, no redirects.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connect, a write or a read may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response, read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The header fields in the order received, names as sent by the server.
    pub headers: Vec<(String, String)>,
    /// The body, with any chunked transfer coding removed.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header field called `name`, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on the server at `addr`.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], &[])
}

/// Sends one request with the given extra header fields and body, and reads the
/// whole response. `Host`, `Connection: close` and (except for GET and HEAD with
/// an empty body) `Content-Length` are added here.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw, method == "HEAD")
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed HTTP response: {what}"))
}

/// Parses a whole response as read from a closed connection.
fn parse(raw: &[u8], head_only: bool) -> io::Result<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().map_err(|_| invalid(status_line))?,
        _ => return Err(invalid(status_line)),
    };
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').ok_or_else(|| invalid(line))?;
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut response = Response { status, headers, body: Vec::new() };
    if head_only {
        return Ok(response);
    }
    let rest = &raw[end + 4..];
    let chunked = response.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    response.body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    if let Some(len) = response.header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        response.body.truncate(len);
    }
    Ok(response)
}

/// Removes the chunked transfer coding: `SIZE-IN-HEX[;ext]\r\nDATA\r\n`, until size 0.
fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("chunk size line"))?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| invalid("chunk size line"))?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| invalid("chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or_else(|| invalid("chunk shorter than its size"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or_else(|| invalid("chunk without its CRLF"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_with_content_length() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nX-Ms-Request-Id: abc\r\n\r\nhello";
        let r = parse(raw, false).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("x-ms-request-id"), Some("abc"));
        assert_eq!(r.text(), "hello");
    }

    #[test]
    fn removes_chunked_coding() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse(raw, false).unwrap().text(), "hello world");
    }

    #[test]
    fn refuses_what_is_not_http() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n", false).is_err());
        let truncated = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort";
        assert!(parse(truncated, false).is_err());
    }
}
