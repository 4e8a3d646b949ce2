//! HTTP/1.1 towards upstreams as plain code over byte buffers, with no I/O: the request
//! written, the response head parsed, and the response body's framing (RFC 9112 §6) decoded.
//! [`super::http1`] moves the bytes; keeping the protocol here lets it be tested on its own,
//! byte by byte.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use std::mem::MaybeUninit;

/// The largest response head accepted, as Envoy's default `max_response_headers_kb` (60 KiB).
pub const MAX_HEAD: usize = 60 * 1024;
/// The most header fields a response head may have, as Envoy's default
/// `max_response_headers_count`.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid header value in the response")]
    HeaderValue,
    #[error("invalid content-length in the response")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
    #[error("the upstream answered 101 Switching Protocols, which the proxy does not forward")]
    Upgrade,
}

/// Writes the request head, with the framing of a body known in full, and the body.
///
/// `target` is the origin form (`/path?query`). The headers' own `content-length` is replaced
/// by the body's; one is sent when the body is not empty, when the request had one, or for a
/// method that carries a body (so a bodiless POST says `content-length: 0`), as hyper's
/// client does.
pub fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    out: &mut BytesMut,
) {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    out.reserve(method.as_str().len() + target.len() + size + body.len() + 48);
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in headers {
        if name == CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let carries_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || had_length || carries_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 204 or 304, or `content-length: 0`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection, which is then not reused.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body is read.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buffer`, consuming it (and any interim 1xx
/// responses before it). `None`: not all of it has arrived.
pub fn parse_head(buffer: &mut BytesMut, method: &Method) -> Result<Option<Head>, CodecError> {
    loop {
        let Some(head) = parse_one(buffer, method)? else {
            if buffer.len() > MAX_HEAD {
                return Err(CodecError::HeadTooLarge);
            }
            return Ok(None);
        };
        let status = head.response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(CodecError::Upgrade);
        }
        // Interim answers (100 Continue, 103 Early Hints) are not forwarded, as Envoy's
        // default; the final response follows them.
        if !status.is_informational() {
            return Ok(Some(head));
        }
    }
}

fn parse_one(buffer: &mut BytesMut, method: &Method) -> Result<Option<Head>, CodecError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let complete = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, buffer, &mut fields)
        .map_err(CodecError::Head)?;
    let httparse::Status::Complete(length) = complete else {
        return Ok(None);
    };
    if length > MAX_HEAD {
        return Err(CodecError::HeadTooLarge);
    }
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(CodecError::Head(httparse::Error::Status))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each field lies in the head (which is under MAX_HEAD, so offsets fit in 16 bits),
    // so that the values can share its bytes.
    let start = buffer.as_ptr() as usize;
    let offset = |field: &[u8]| (field.as_ptr() as usize - start) as u16;
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (field.name.as_bytes(), field.value);
        *span = (
            offset(name),
            name.len() as u16,
            offset(value),
            value.len() as u16,
        );
    }
    let head = buffer.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, name_len, value, value_len) in &spans[..count] {
        let (name, value) = (usize::from(name), usize::from(value));
        let name = HeaderName::from_bytes(&head[name..name + usize::from(name_len)])
            .map_err(|_| CodecError::Head(httparse::Error::HeaderName))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value..value + usize::from(value_len)))
                .map_err(|_| CodecError::HeaderValue)?;
        headers.append(name, value);
    }
    let keep_alive = keep_alive(version, &headers);
    let framing = framing(status, method, &mut headers)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Head {
        response,
        keep_alive: keep_alive && framing != Framing::UntilClose,
        framing,
    }))
}

fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let says = |token: &str| {
        headers.get_all(CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    match version {
        Version::HTTP_10 => says("keep-alive"),
        _ => !says("close"),
    }
}

/// The body's framing (RFC 9112 §6.3). A `content-length` beside `transfer-encoding` is
/// dropped, as the latter wins.
fn framing(
    status: StatusCode,
    method: &Method,
    headers: &mut HeaderMap,
) -> Result<Framing, CodecError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|coding| !coding.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        // Several fields, or a list, must all say the same number.
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(CodecError::ContentLength);
            }
            let parsed: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(CodecError::ContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(CodecError::ContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
        None => Framing::UntilClose,
    })
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The body is not finished and the buffer holds no more of it.
    NeedMore,
    /// The last chunk and the trailers (which are dropped, as Envoy's HTTP/1 codec does by
    /// default) have been read.
    End,
}

/// Decodes a chunked body (RFC 9112 §7.1) from a buffer that fills as bytes arrive.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, CodecError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buffer)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = match size {
                        0 => ChunkState::Trailers,
                        size => ChunkState::Data(size),
                    };
                }
                ChunkState::Data(remaining) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buffer.len());
                    let data = buffer.split_to(take).freeze();
                    let left = remaining.saturating_sub(take as u64);
                    self.state = match left {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buffer.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(CodecError::Chunk("no CRLF after a chunk's data"));
                    }
                    buffer.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buffer)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// The next CRLF-terminated line, without its CRLF.
fn take_line(buffer: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
    let Some(end) = buffer.windows(2).position(|pair| pair == b"\r\n") else {
        if buffer.len() > MAX_LINE {
            return Err(CodecError::Chunk("line too long"));
        }
        return Ok(None);
    };
    if end > MAX_LINE {
        return Err(CodecError::Chunk("line too long"));
    }
    let line = buffer.split_to(end);
    buffer.advance(2);
    Ok(Some(line))
}

/// The hexadecimal size at the start of a chunk-size line; extensions after `;` are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() {
        return Err(CodecError::Chunk("no chunk size"));
    }
    digits.iter().try_fold(0u64, |size, &digit| {
        let value = char::from(digit)
            .to_digit(16)
            .ok_or(CodecError::Chunk("chunk size is not hexadecimal"))?;
        size.checked_mul(16)
            .and_then(|size| size.checked_add(u64::from(value)))
            .ok_or(CodecError::Chunk("chunk size too large"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<Option<Head>, CodecError> {
        parse_head(&mut BytesMut::from(text), &method)
    }

    #[test]
    fn a_request_is_written_with_its_body_length() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "web.example".parse().unwrap());
        headers.insert("content-length", "99".parse().unwrap());
        let mut out = BytesMut::new();
        encode_request(&Method::POST, "/a?b=c", &headers, b"hello", &mut out);
        assert_eq!(
            &out[..],
            b"POST /a?b=c HTTP/1.1\r\nhost: web.example\r\ncontent-length: 5\r\n\r\nhello"
        );

        let mut out = BytesMut::new();
        encode_request(&Method::GET, "/", &HeaderMap::new(), b"", &mut out);
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\n\r\n");
        let mut out = BytesMut::new();
        encode_request(&Method::POST, "/", &HeaderMap::new(), b"", &mut out);
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_consumed() {
        let mut buffer = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n");
        assert!(parse_head(&mut buffer, &Method::GET).unwrap().is_none());
        buffer.extend_from_slice(b"x-a: 2\r\n\r\nok\nNEXT");
        let head = parse_head(&mut buffer, &Method::GET).unwrap().unwrap();
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive);
        let values: Vec<_> = head.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buffer[..], b"ok\nNEXT");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |text: &str, method| head(text, method).unwrap().unwrap().framing;
        let get = || Method::GET;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", get()),
            Framing::Empty
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                get()
            ),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", get()),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", get()),
            Framing::Length(7)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                get()
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", get()),
            Framing::UntilClose
        );
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n", get()).unwrap().unwrap();
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(!until_close.keep_alive);
        // A content-length beside transfer-encoding is not forwarded.
        let both = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\n\r\n",
            get(),
        );
        assert!(!both
            .unwrap()
            .unwrap()
            .response
            .headers()
            .contains_key("content-length"));
    }

    #[test]
    fn bad_lengths_and_upgrades_are_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\ncontent-length: 7, 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                head(text, Method::GET).unwrap_err(),
                CodecError::ContentLength,
                "{text}"
            );
        }
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET).unwrap_err(),
            CodecError::Upgrade
        );
        assert!(matches!(
            head("HTTP/1.1 2OO OK\r\n\r\n", Method::GET),
            Err(CodecError::Head(_))
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            head(&huge, Method::GET).unwrap_err(),
            CodecError::HeadTooLarge
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buffer = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        );
        let head = parse_head(&mut buffer, &Method::POST).unwrap().unwrap();
        assert_eq!(head.response.status(), StatusCode::CREATED);
        assert!(!head.response.headers().contains_key("link"));
        assert!(buffer.is_empty());
    }

    #[test]
    fn connection_reuse_follows_the_version_and_connection_header() {
        let keep = |text: &str| head(text, Method::GET).unwrap().unwrap().keep_alive;
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(keep(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(keep(
            "HTTP/1.1 200 OK\r\nconnection: x, keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
    }

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<u8>, CodecError> {
        let mut decoder = Chunked::default();
        let mut buffer = BytesMut::new();
        let mut body = Vec::new();
        for chunk in chunks {
            buffer.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buffer)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok(body),
                }
            }
        }
        Err(CodecError::Chunk("unfinished"))
    }

    #[test]
    fn chunked_bodies_are_decoded_however_they_are_split() {
        let whole: &[u8] =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let expected = b"helloabcdefghijklmnopqrstuvwxyz".to_vec();
        assert_eq!(decode_all(&[whole]).unwrap(), expected);
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), expected);
        for cut in 0..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(decode_all(&[a, b]).unwrap(), expected, "cut at {cut}");
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(decode_all(&[bad]), Err(CodecError::Chunk(_))),
                "{bad:?}"
            );
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(decode_all(&[&long]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_of_any_body_decodes_to_that_body(
            pieces in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..8),
            split in 1usize..64,
        ) {
            let mut encoded = Vec::new();
            for piece in &pieces {
                encoded.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                encoded.extend_from_slice(piece);
                encoded.extend_from_slice(b"\r\n");
            }
            encoded.extend_from_slice(b"0\r\n\r\n");
            let parts: Vec<&[u8]> = encoded.chunks(split).collect();
            proptest::prop_assert_eq!(decode_all(&parts).unwrap(), pieces.concat());
        }

        #[test]
        fn no_response_bytes_make_the_parser_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_head(&mut BytesMut::from(&bytes[..]), &Method::GET);
            let _ = Chunked::default().decode(&mut BytesMut::from(&bytes[..]));
        }
    }
}
