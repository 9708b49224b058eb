//! A Server-Sent Events reader for `GET /sse`: reads the response body chunk by chunk and parses
//! it into blocks (the lines up to a blank line) the way `EventSource` does: `id:`, `event:`,
//! `data:` (several are joined with `\n`), `retry:`, and comment lines starting with `:`.

use std::collections::VecDeque;
use std::time::Duration;

use mps_proto::{ErrorBody, ErrorResponse, Frame};

use crate::{Error, Result};

/// One block of the stream: an event, a `retry:` line, comments, or any mix of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseBlock {
    pub id: Option<String>,
    /// The `event:` name; `None` is the default `message` event.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` when the block had none.
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// Comment lines, without the leading `:` and one space.
    pub comments: Vec<String>,
}

impl SseBlock {
    /// Whether this block dispatches an event (it has data).
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }

    /// The data parsed as a frame (a push frame, or `Type` 10 for `event: reset`).
    pub fn frame(&self) -> Result<Frame> {
        let data = self
            .data
            .as_deref()
            .ok_or_else(|| Error::Unexpected(format!("no data in {self:?}")))?;
        Ok(serde_json::from_str(data)?)
    }
}

/// An open event stream.
pub struct Sse {
    response: reqwest::Response,
    parser: Parser,
    first_chunk: Option<String>,
    ended: bool,
}

impl Sse {
    /// Opens `url` (for example `http://host:port/sse?token=...&topics=alarms/%23`) with extra
    /// request headers (`Authorization`, `Last-Event-ID`). A non-2xx answer is returned as
    /// [`Error::Refused`] with the server's error body.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Sse> {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await?;
            let error = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| ErrorBody {
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                });
            return Err(Error::Refused {
                status: status.as_u16(),
                error,
            });
        }
        Ok(Sse {
            response,
            parser: Parser::default(),
            first_chunk: None,
            ended: false,
        })
    }

    /// The response headers.
    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        self.response.headers()
    }

    /// The text of the first body chunk, once one has been read.
    pub fn first_chunk(&self) -> Option<&str> {
        self.first_chunk.as_deref()
    }

    /// The next block of any kind, within `wait`. A stream the server ended gives
    /// [`Error::Closed`] (code 0).
    pub async fn next_block(&mut self, wait: Duration) -> Result<SseBlock> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(block) = self.parser.ready.pop_front() {
                    return Ok(block);
                }
                if self.ended {
                    return Err(Error::Closed {
                        code: 0,
                        reason: "event stream ended".into(),
                    });
                }
                match self.response.chunk().await {
                    Ok(Some(chunk)) => {
                        if self.first_chunk.is_none() {
                            self.first_chunk = Some(String::from_utf8_lossy(&chunk).into_owned());
                        }
                        self.parser.feed(&chunk);
                    }
                    Ok(None) => self.ended = true,
                    // A connection cut mid-stream ends it the same way.
                    Err(_) => self.ended = true,
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }

    /// The next event (a block with data), skipping comments and `retry:`, within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Result<SseBlock> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.next_block(left).await?;
            if block.is_event() {
                return Ok(block);
            }
        }
    }

    /// Reads until the server ends the stream; returns the events seen meanwhile.
    pub async fn closed(&mut self, wait: Duration) -> Result<Vec<SseBlock>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_block(left).await {
                Ok(block) if block.is_event() => events.push(block),
                Ok(_) => {}
                Err(Error::Closed { .. }) => return Ok(events),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The stream's parsing state: bytes of an unfinished line, the block being read, and the
/// blocks completed but not yet taken.
#[derive(Default)]
struct Parser {
    partial: Vec<u8>,
    block: SseBlock,
    has_fields: bool,
    /// The last byte was `\r`.
    after_cr: bool,
    ready: VecDeque<SseBlock>,
}

impl Parser {
    fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                // The `\n` of a `\r\n` ending: the line already ended at the `\r`.
                b'\n' if after_cr => {}
                b'\n' | b'\r' => self.end_line(),
                _ => self.partial.push(byte),
            }
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if line.is_empty() {
            if self.has_fields {
                self.ready.push_back(std::mem::take(&mut self.block));
                self.has_fields = false;
            }
            return;
        }
        self.has_fields = true;
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            self.block.comments.push(comment.to_owned());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "id" => self.block.id = Some(value.to_owned()),
            "event" => self.block.event = Some(value.to_owned()),
            "data" => match &mut self.block.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.block.data = Some(value.to_owned()),
            },
            "retry" => self.block.retry = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<SseBlock> {
        let mut parser = Parser::default();
        for chunk in chunks {
            parser.feed(chunk.as_bytes());
        }
        parser.ready.into_iter().collect()
    }

    #[test]
    fn parses_events_comments_and_retry_across_chunks() {
        let blocks = parse(&[
            "retry: 3000\n\nid: 1",
            "7\ndata: {\"a\":1}\n\n: ping\n\nevent: reset\r\ndata: x\r\ndata: y\r\n\r\n",
            "data:no-space\r",
            "\r: two\r\rdata: z\n\n",
        ]);
        assert_eq!(blocks.len(), 7, "{blocks:?}");
        assert_eq!(blocks[0].retry, Some(3000));
        assert!(!blocks[0].is_event());
        assert_eq!(blocks[1].id.as_deref(), Some("17"));
        assert_eq!(blocks[1].data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(blocks[2].comments, vec!["ping".to_owned()]);
        assert_eq!(blocks[3].event.as_deref(), Some("reset"));
        assert_eq!(blocks[3].data.as_deref(), Some("x\ny"));
        assert_eq!(blocks[4].data.as_deref(), Some("no-space"));
        assert_eq!(blocks[5].comments, vec!["two".to_owned()]);
        assert_eq!(blocks[6].data.as_deref(), Some("z"));
    }
}
