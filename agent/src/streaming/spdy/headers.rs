//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! A block is a 32-bit count followed by that many (32-bit length, name, 32-bit length, value) entries, all
//! big-endian. A header that has several values carries them in one entry, separated by NUL bytes. Names are
//! lower case and unique within a block.
//!
//! Blocks are compressed with zlib, primed with the dictionary that the SPDY/3 draft defines (section 2.6.10.1).
//! Each direction of a session is ONE zlib stream: every block is compressed with the same context and ended
//! with a SYNC flush, so the receiver decodes each frame's bytes as they arrive and the next block may refer to
//! the strings of earlier ones. A decompression error therefore ruins every later block of the session.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 dictionary is a run of length-prefixed words (each a 32-bit big-endian length, then the word)...
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// ...followed by plain text without length prefixes: status codes, reason phrases, dates, common values.
const DICTIONARY_TAIL: &[&str] = &[
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,public",
    "privatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    for text in DICTIONARY_TAIL {
        dict.extend_from_slice(text.as_bytes());
    }
    dict
});

/// The dictionary's Adler-32, which a zlib stream primed with it names in its header (DICTID).
pub const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// The SPDY/3 header compression dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    &DICTIONARY
}

/// What a header block (or its compression) got wrong.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("header compression failed")]
    Compress(#[source] flate2::CompressError),
    #[error("header block is not valid zlib data")]
    Decompress(#[source] flate2::DecompressError),
    #[error("header block asks for zlib dictionary {0:#010x}, not the SPDY/3 one")]
    WrongDictionary(u32),
    #[error("header block decompresses to more than {max} bytes")]
    TooLarge { max: usize },
    #[error("header block is truncated")]
    Truncated,
    #[error("header block has {0} bytes after its last entry")]
    TrailingBytes(usize),
    #[error("header block has an empty name")]
    EmptyName,
    #[error("header name {0:?} is not lower case")]
    NotLowerCase(String),
    #[error("header name {0:?} appears twice")]
    Duplicate(String),
    #[error("header {0:?} is not UTF-8")]
    NotUtf8(String),
    #[error("header block entry is {0} bytes long, more than a block can hold")]
    EntryTooLong(usize),
}

/// Serializes `headers` into an uncompressed block. Entries that share a name are merged into one, their
/// values joined with NUL; names are lower-cased.
pub fn encode_block(headers: &[(String, String)]) -> Result<Vec<u8>, HeaderError> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    let mut block = Vec::new();
    block.extend_from_slice(&(merged.len() as u32).to_be_bytes());
    for (name, value) in &merged {
        for part in [name.as_bytes(), value.as_bytes()] {
            let len =
                u32::try_from(part.len()).map_err(|_| HeaderError::EntryTooLong(part.len()))?;
            block.extend_from_slice(&len.to_be_bytes());
            block.extend_from_slice(part);
        }
    }
    Ok(block)
}

/// Parses an uncompressed block. A value holding NUL-separated values yields one pair per value, in order.
pub fn parse_block(block: &[u8]) -> Result<Vec<(String, String)>, HeaderError> {
    let mut rest = block;
    let count = take_u32(&mut rest)? as usize;
    // Every entry takes at least 8 bytes, so a count beyond that is a lie; never size a Vec from it unchecked.
    if count > rest.len() / 8 {
        return Err(HeaderError::Truncated);
    }
    let mut headers = Vec::with_capacity(count);
    let mut names: Vec<String> = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_bytes(&mut rest)?;
        let value = take_bytes(&mut rest)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| HeaderError::NotUtf8(String::from_utf8_lossy(name).into_owned()))?;
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(HeaderError::NotLowerCase(name.to_owned()));
        }
        if names.iter().any(|n| n == name) {
            return Err(HeaderError::Duplicate(name.to_owned()));
        }
        let value =
            std::str::from_utf8(value).map_err(|_| HeaderError::NotUtf8(name.to_owned()))?;
        names.push(name.to_owned());
        for part in value.split('\0') {
            headers.push((name.to_owned(), part.to_owned()));
        }
    }
    if !rest.is_empty() {
        return Err(HeaderError::TrailingBytes(rest.len()));
    }
    Ok(headers)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, HeaderError> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(HeaderError::Truncated)?;
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], HeaderError> {
    let len = take_u32(rest)? as usize;
    if len > rest.len() {
        return Err(HeaderError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Ok(bytes)
}

/// The sending side's compression context: one per session.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    pub fn new() -> Result<Self, HeaderError> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(dictionary())
            .map_err(HeaderError::Compress)?;
        Ok(HeaderCompressor { zlib })
    }

    /// Compresses one block and SYNC-flushes it, so the peer can decode it from this frame's bytes alone.
    pub fn compress(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let start_in = self.zlib.total_in();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.len().max(256));
            }
            let consumed = (self.zlib.total_in() - start_in) as usize;
            self.zlib
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(HeaderError::Compress)?;
            // zlib has finished the flush once it took all input and still left room in the output.
            let consumed = (self.zlib.total_in() - start_in) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's decompression context: one per session.
pub struct HeaderDecompressor {
    zlib: Decompress,
    max_block: usize,
}

impl HeaderDecompressor {
    /// `max_block` bounds what one block may decompress to.
    pub fn new(max_block: usize) -> Self {
        HeaderDecompressor {
            zlib: Decompress::new(true),
            max_block,
        }
    }

    /// Decompresses one frame's header bytes. All of them must be consumed: they end with the sender's SYNC
    /// flush.
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity((compressed.len() * 4).clamp(64, self.max_block));
        let start_in = self.zlib.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= self.max_block {
                    return Err(HeaderError::TooLarge {
                        max: self.max_block,
                    });
                }
                let room = self.max_block - out.len();
                out.reserve_exact(out.len().max(256).min(room));
            }
            let consumed = (self.zlib.total_in() - start_in) as usize;
            let before_out = out.len();
            let status =
                self.zlib
                    .decompress_vec(&compressed[consumed..], &mut out, FlushDecompress::Sync);
            let now_consumed = (self.zlib.total_in() - start_in) as usize;
            match status {
                // SPDY never ends the zlib stream; an end is as broken as bad data.
                Ok(Status::StreamEnd) => return Err(HeaderError::Truncated),
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(id) => {
                        if id != DICTIONARY_ID {
                            return Err(HeaderError::WrongDictionary(id));
                        }
                        self.zlib
                            .set_dictionary(dictionary())
                            .map_err(HeaderError::Decompress)?;
                        continue;
                    }
                    None => return Err(HeaderError::Decompress(e)),
                },
            }
            if now_consumed == compressed.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if now_consumed == consumed && out.len() == before_out && out.len() < out.capacity() {
                // No progress with input left and room to spare.
                return Err(HeaderError::Truncated);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        // Length and Adler-32 of the dictionary as printed in the SPDY/3 draft (the Adler-32 is also the
        // DICTID that every SPDY/3 header stream carries in its zlib header).
        assert_eq!(dictionary().len(), 1423);
        let mut z = Compress::new(Compression::default(), true);
        assert_eq!(z.set_dictionary(dictionary()).unwrap(), 0xe3c6_a7c2);
        assert_eq!(DICTIONARY_ID, 0xe3c6_a7c2);
        assert!(dictionary().starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(dictionary().ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn block_layout_matches_the_draft() {
        // count=2, "a"="1", "bc"="x\0y": 32-bit counts and lengths, big-endian.
        let block = encode_block(&pairs(&[("a", "1"), ("BC", "x"), ("bc", "y")])).unwrap();
        let expected: &[u8] = b"\0\0\0\x02\0\0\0\x01a\0\0\0\x011\0\0\0\x02bc\0\0\0\x03x\0y";
        assert_eq!(block, expected);
        assert_eq!(
            parse_block(&block).unwrap(),
            pairs(&[("a", "1"), ("bc", "x"), ("bc", "y")])
        );
    }

    #[test]
    fn parse_rejects_bad_blocks() {
        assert!(matches!(parse_block(b"\0\0"), Err(HeaderError::Truncated)));
        // A count far beyond what the bytes could hold is refused before anything is allocated.
        assert!(matches!(
            parse_block(b"\xff\xff\xff\xff\0\0\0\0\0\0\0\0"),
            Err(HeaderError::Truncated)
        ));
        assert!(matches!(
            parse_block(b"\0\0\0\x01\xff\xff\xff\xffab"),
            Err(HeaderError::Truncated)
        ));
        assert!(matches!(
            parse_block(b"\0\0\0\x01\0\0\0\x01A\0\0\0\0"),
            Err(HeaderError::NotLowerCase(_))
        ));
        assert!(matches!(
            parse_block(b"\0\0\0\x02\0\0\0\x01a\0\0\0\0\0\0\0\x01a\0\0\0\0"),
            Err(HeaderError::Duplicate(_))
        ));
        assert!(matches!(
            parse_block(b"\0\0\0\x01\0\0\0\0\0\0\0\0"),
            Err(HeaderError::EmptyName)
        ));
        assert!(matches!(
            parse_block(b"\0\0\0\0x"),
            Err(HeaderError::TrailingBytes(1))
        ));
    }

    #[test]
    fn compressed_blocks_decode_with_a_fresh_decompressor() {
        let mut c = HeaderCompressor::new().unwrap();
        let first = encode_block(&pairs(&[("streamtype", "stdout"), ("port", "8080")])).unwrap();
        let second = encode_block(&pairs(&[("streamtype", "stderr"), ("requestid", "7")])).unwrap();
        let z1 = c.compress(&first).unwrap();
        let z2 = c.compress(&second).unwrap();
        // A zlib header announcing a preset dictionary (FDICT) whose id is the SPDY/3 dictionary's Adler-32.
        assert_eq!(z1[0] & 0x0f, 8, "deflate");
        assert_ne!(z1[1] & 0x20, 0, "FDICT set");
        assert_eq!(&z1[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        // A SYNC flush ends each block with an empty stored block.
        assert!(z1.ends_with(&[0, 0, 0xff, 0xff]));
        assert!(z2.ends_with(&[0, 0, 0xff, 0xff]));

        let mut d = HeaderDecompressor::new(64 * 1024);
        assert_eq!(d.decompress(&z1).unwrap(), first);
        assert_eq!(d.decompress(&z2).unwrap(), second);
    }

    #[test]
    fn decompressor_refuses_garbage_and_bombs() {
        let mut d = HeaderDecompressor::new(1024);
        assert!(matches!(
            d.decompress(b"not zlib at all"),
            Err(HeaderError::Decompress(_))
        ));

        // 100 KiB of one byte compresses to little and must not be inflated past the limit.
        let mut c = HeaderCompressor::new().unwrap();
        let z = c.compress(&vec![b'a'; 100 * 1024]).unwrap();
        let mut d = HeaderDecompressor::new(1024);
        assert!(matches!(
            d.decompress(&z),
            Err(HeaderError::TooLarge { max: 1024 })
        ));
    }

    #[test]
    fn wrong_dictionary_is_refused() {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(b"some other dictionary").unwrap();
        let mut out = Vec::with_capacity(256);
        z.compress_vec(b"\0\0\0\0", &mut out, FlushCompress::Sync)
            .unwrap();
        let mut d = HeaderDecompressor::new(1024);
        let got = d.decompress(&out);
        assert!(
            matches!(got, Err(HeaderError::WrongDictionary(_))),
            "{got:?}"
        );
    }
}
