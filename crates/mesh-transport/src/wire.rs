//! Framing of one call on one bidirectional stream.
//!
//! Request: `u32 method length | method (UTF-8) | u32 body length | body`.
//! Response: `u8 status | u32 length | payload`, status 0 = ok (payload = body),
//! 1 = error (payload = JSON [`RemoteError`]). Integers are big-endian. The client finishes its
//! send side after the request; the server after the response.

use quinn::{ReadExactError, RecvStream, SendStream, WriteError};

use crate::error::RemoteError;

/// Largest body of a request or response.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// Longest method name.
pub const MAX_METHOD_LEN: usize = 256;

const STATUS_OK: u8 = 0;
const STATUS_ERR: u8 = 1;

/// A frame that could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The stream failed.
    Read(ReadExactError),
    /// The frame is malformed.
    Malformed(String),
}

impl From<ReadExactError> for FrameError {
    fn from(e: ReadExactError) -> Self {
        FrameError::Read(e)
    }
}

async fn read_u32(recv: &mut RecvStream) -> Result<u32, ReadExactError> {
    let mut buf = [0u8; 4];
    recv.read_exact(&mut buf).await?;
    Ok(u32::from_be_bytes(buf))
}

async fn read_bytes(
    recv: &mut RecvStream,
    what: &str,
    limit: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = read_u32(recv).await? as usize;
    if len > limit {
        return Err(FrameError::Malformed(format!(
            "{what} of {len} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await?;
    Ok(buf)
}

fn len_u32(len: usize) -> [u8; 4] {
    // Callers check lengths against MAX_MESSAGE_SIZE, far below u32::MAX.
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

pub(crate) async fn write_request(
    send: &mut SendStream,
    method: &str,
    body: &[u8],
) -> Result<(), WriteError> {
    let mut head = Vec::with_capacity(8 + method.len());
    head.extend_from_slice(&len_u32(method.len()));
    head.extend_from_slice(method.as_bytes());
    head.extend_from_slice(&len_u32(body.len()));
    send.write_all(&head).await?;
    send.write_all(body).await
}

pub(crate) async fn read_request(recv: &mut RecvStream) -> Result<(String, Vec<u8>), FrameError> {
    let method = read_bytes(recv, "method name", MAX_METHOD_LEN).await?;
    let method = String::from_utf8(method)
        .map_err(|_| FrameError::Malformed("method name is not UTF-8".into()))?;
    let body = read_bytes(recv, "request body", MAX_MESSAGE_SIZE).await?;
    Ok((method, body))
}

pub(crate) async fn write_response(
    send: &mut SendStream,
    result: &Result<Vec<u8>, RemoteError>,
) -> Result<(), WriteError> {
    let (status, payload) = match result {
        Ok(body) => (STATUS_OK, std::borrow::Cow::Borrowed(body.as_slice())),
        Err(err) => {
            // Serializing two strings cannot fail; fall back to an empty object regardless.
            let json = serde_json::to_vec(err).unwrap_or_else(|_| b"{}".to_vec());
            (STATUS_ERR, std::borrow::Cow::Owned(json))
        }
    };
    let mut head = Vec::with_capacity(5);
    head.push(status);
    head.extend_from_slice(&len_u32(payload.len()));
    send.write_all(&head).await?;
    send.write_all(&payload).await
}

pub(crate) async fn read_response(
    recv: &mut RecvStream,
) -> Result<Result<Vec<u8>, RemoteError>, FrameError> {
    let mut status = [0u8; 1];
    recv.read_exact(&mut status).await?;
    let payload = read_bytes(recv, "response", MAX_MESSAGE_SIZE).await?;
    match status[0] {
        STATUS_OK => Ok(Ok(payload)),
        STATUS_ERR => {
            let err: RemoteError = serde_json::from_slice(&payload).map_err(|e| {
                FrameError::Malformed(format!("the remote error is not valid JSON: {e}"))
            })?;
            Ok(Err(err))
        }
        other => Err(FrameError::Malformed(format!(
            "unknown response status {other}"
        ))),
    }
}
