//! The coordinator's HTTP API as the runner and the CLI use it.

use std::time::Duration;

use berth_api::ErrorBody;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A call to the coordinator that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached (or the connection broke): worth retrying.
    #[error("cannot reach the berth server at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered with an error status.
    #[error("the berth server answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        fields: Vec<berth_api::FieldError>,
    },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Unreachable { .. } => None,
        }
    }

    /// The server refused a write for this run because the lease is gone or the state moved on.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// The server refused the body as too large (413).
    pub fn is_too_large(&self) -> bool {
        self.status() == Some(413)
    }
}

/// `bytes` as one URL path segment: everything but the unreserved characters of RFC 3986
/// (letters, digits, `-`, `.`, `_`, `~`) percent-encoded, so `/`, `?`, `#`, `%` and spaces
/// in a name stay part of it.
pub fn encode_segment(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API path of a run's artifact, each segment of `relative` percent-encoded on its own.
/// Only plain names are kept: `.`, `..` and a leading `/` never reach the server from here.
pub fn artifact_url_path(run_id: &str, relative: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let segments: Vec<String> = relative
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(encode_segment(name.as_bytes())),
            _ => None,
        })
        .collect();
    format!(
        "/api/v1/runs/{}/artifacts/{}",
        encode_segment(run_id.as_bytes()),
        segments.join("/")
    )
}

/// An authenticated client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Unreachable {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let response = request
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable {
                url: self.base.clone(),
                message: error_chain(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let (message, fields) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error, body.errors),
            Err(_) => (text.trim().to_string(), Vec::new()),
        };
        Err(ApiError::Status {
            status: status.as_u16(),
            message,
            fields,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let response = self
            .send(self.http.get(self.url(path)), Duration::from_secs(30))
            .await?;
        decode(response, &self.base).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.post_with_timeout(path, body, Duration::from_secs(30))
            .await
    }

    pub async fn post_with_timeout<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let response = self
            .send(self.http.post(self.url(path)).json(body), timeout)
            .await?;
        decode(response, &self.base).await
    }

    /// POST that may answer 204 No Content (`None`).
    pub async fn post_optional<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<T>, ApiError> {
        let response = self
            .send(self.http.post(self.url(path)).json(body), timeout)
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        decode(response, &self.base).await.map(Some)
    }

    pub async fn put_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        let mut request = self.http.put(self.url(path)).body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request, Duration::from_secs(300))
            .await
            .map(|_| ())
    }

    /// Uploads one artifact of a run under its lease; `relative` is encoded segment by segment.
    pub async fn put_artifact(
        &self,
        run_id: &str,
        relative: &std::path::Path,
        body: Vec<u8>,
        lease_token: &str,
    ) -> Result<(), ApiError> {
        self.put_bytes(
            &artifact_url_path(run_id, relative),
            body,
            &[("x-berth-lease", lease_token)],
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.send(self.http.delete(self.url(path)), Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// A streaming GET (server-sent events); the caller reads the body.
    pub async fn get_stream(
        &self,
        path: &str,
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut request = self
            .http
            .get(self.url(path))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        self.send(request, Duration::from_secs(24 * 3600)).await
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let response = self
            .send(self.http.get(self.url(path)), Duration::from_secs(300))
            .await?;
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ApiError::Unreachable {
                url: self.base.clone(),
                message: error_chain(&e),
            })
    }
}

async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    base: &str,
) -> Result<T, ApiError> {
    let bytes = response.bytes().await.map_err(|e| ApiError::Unreachable {
        url: base.to_string(),
        message: error_chain(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Status {
        status: 200,
        message: format!("unexpected answer: {e}"),
        fields: Vec::new(),
    })
}

/// reqwest's errors hide the useful part (connection refused, timed out) in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn artifact_paths_are_encoded_segment_by_segment() {
        let cases = [
            ("a.txt", "a.txt"),
            ("out dir/report #1.txt", "out%20dir/report%20%231.txt"),
            ("what?/100%", "what%3F/100%25"),
            ("résumé", "r%C3%A9sum%C3%A9"),
            ("./berth/diff.patch", "berth/diff.patch"),
        ];
        for (relative, encoded) in cases {
            assert_eq!(
                artifact_url_path("r1", Path::new(relative)),
                format!("/api/v1/runs/r1/artifacts/{encoded}"),
                "{relative}"
            );
        }
        // A name that is not UTF-8 is sent byte for byte.
        use std::os::unix::ffi::OsStrExt;
        let raw = Path::new(std::ffi::OsStr::from_bytes(b"bin\xff"));
        assert_eq!(
            artifact_url_path("r1", raw),
            "/api/v1/runs/r1/artifacts/bin%FF"
        );
    }
}
