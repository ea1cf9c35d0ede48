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
