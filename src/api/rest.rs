//! REST handlers: routing by method and path, JSON in and out, errors as `{"error","code"}`.
//!
//! Handlers only translate: JSON → `pipeline::SendInput`, pipeline answers → JSON. Every rule
//! about messages lives in `crate::shard::pipeline`.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorKind};
use super::http::{Method, Request, Response};
use super::server::Service;
use crate::shard::batch::BatchMeta;
use crate::shard::pipeline::{Pipeline, SendAnswer, SendInput};
use crate::shard::stages::RequestMeta;
use crate::smpp::text::Encoding;

/// `POST` path of the batch submit.
pub const BATCH_PATH: &str = "/api/v1/sms/send-batch";
/// Most messages in one batch submit; more is 422 `invalid_field` for the whole request.
pub const BATCH_MAX_ITEMS: usize = 1000;
/// Body bound of the batch submit only (every other path keeps `server.max_body_bytes`):
/// room for `BATCH_MAX_ITEMS` typical messages (a 3-part text is ~500 bytes of JSON).
pub const BATCH_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The OpenAPI document, kept in the repository and served as is.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

pub struct RestApi {
    pipeline: Rc<Pipeline>,
}

impl RestApi {
    pub fn new(pipeline: Rc<Pipeline>) -> RestApi {
        RestApi { pipeline }
    }
}

impl Service for RestApi {
    async fn call(&self, req: &Request<'_>) -> Response {
        let resp = self.answer(req).await;
        self.metrics().http_request(req.path, resp.status);
        resp
    }
}

impl RestApi {
    fn metrics(&self) -> &crate::metrics::ShardMetrics {
        self.pipeline.shared.metrics.shard(self.pipeline.shard_id)
    }

    async fn answer(&self, req: &Request<'_>) -> Response {
        match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => {
                if req.path == "/api/v1/sms/send" {
                    self.metrics().rejected(e.kind.code());
                }
                if e.kind.http_status() >= 500 {
                    tracing::warn!(path = req.path, code = e.kind.code(), error = %e, "request failed");
                }
                let resp = e.to_response();
                if e.kind == ErrorKind::MethodNotAllowed {
                    resp.with_header("allow", allowed_methods(req.path).to_string())
                } else {
                    resp
                }
            }
        }
    }
}

fn allowed_methods(path: &str) -> &'static str {
    match path {
        "/api/v1/sms/send"
        | BATCH_PATH
        | "/api/v1/sms/check-text-len"
        | "/api/v1/user/login"
        | "/api/v1/admin/reload" => "POST",
        _ => "GET, HEAD",
    }
}

const STATUS_PREFIX: &str = "/api/v1/sms/";

impl RestApi {
    async fn route(&self, req: &Request<'_>) -> Result<Response, ApiError> {
        let get = matches!(req.method, Method::Get | Method::Head);
        let post = req.method == Method::Post;
        let wrong_method = || {
            Err(ApiError::new(
                ErrorKind::MethodNotAllowed,
                "method not allowed on this path",
            ))
        };
        // Every /api/v1/sms/* and /api/v1/smpp/* request is authenticated before anything else.
        if req.path.starts_with("/api/v1/sms/") || req.path.starts_with("/api/v1/smpp/") {
            let meta_headers = |name: &str| req.header_str(name);
            let meta = RequestMeta {
                client_ip: client_ip(req),
                header: &meta_headers,
            };
            self.pipeline.authenticate(&meta).await?;
        }
        if let Some(admin) = req.path.strip_prefix("/api/v1/admin/") {
            return self.admin(admin, req);
        }
        match req.path {
            "/api/v1/user/login" => {
                if !post {
                    return wrong_method();
                }
                self.login(req).await
            }
            "/healthy" => {
                if !get {
                    return wrong_method();
                }
                Ok(Response::json(200, br#"{"status":"ok"}"#.to_vec()))
            }
            "/api/v1/sms/send" => {
                if !post {
                    return wrong_method();
                }
                self.send(req).await
            }
            "/api/v1/sms/check-text-len" => {
                if !post {
                    return wrong_method();
                }
                self.check_text_len(req)
            }
            BATCH_PATH => {
                if !post {
                    return wrong_method();
                }
                self.send_batch(req).await
            }
            "/api/v1/smpp/links" => {
                if !get {
                    return wrong_method();
                }
                Ok(json(200, &self.pipeline.links_report()))
            }
            "/metrics" => {
                if !get {
                    return wrong_method();
                }
                Ok(Response {
                    status: 200,
                    content_type: crate::metrics::CONTENT_TYPE,
                    body: crate::metrics::scrape(&self.pipeline.shared).into_bytes(),
                    headers: Vec::new(),
                })
            }
            "/openapi.json" => {
                if !get {
                    return wrong_method();
                }
                Ok(Response::json(200, OPENAPI_JSON.as_bytes().to_vec()))
            }
            path if path.starts_with(STATUS_PREFIX)
                && !path[STATUS_PREFIX.len()..].contains('/') =>
            {
                if !get {
                    return wrong_method();
                }
                let id = percent_decode(&path[STATUS_PREFIX.len()..]).ok_or_else(|| {
                    ApiError::new(ErrorKind::InvalidField, "transaction_id is not valid UTF-8")
                })?;
                if id.is_empty() {
                    return Err(ApiError::new(ErrorKind::NotFound, "no such route"));
                }
                let meta_headers = |name: &str| req.header_str(name);
                let meta = RequestMeta {
                    client_ip: client_ip(req),
                    header: &meta_headers,
                };
                let record = self.pipeline.status(&id, &meta).await?;
                Ok(json(200, &StatusView::from_record(&record)))
            }
            _ => Err(ApiError::new(ErrorKind::NotFound, "no such route")),
        }
    }

    async fn send(&self, req: &Request<'_>) -> Result<Response, ApiError> {
        let started = std::time::Instant::now();
        let body: SendBody<'_> = parse_json(req.body)?;
        let input = body.into_input()?;
        let meta_headers = |name: &str| req.header_str(name);
        let meta = RequestMeta {
            client_ip: client_ip(req),
            header: &meta_headers,
        };
        let answer = self.pipeline.send(input, &meta).await?;
        let status = match &answer.error {
            None => 200,
            Some(e) => e.kind.http_status(),
        };
        let resp = json(status, &SendView::from(&answer));
        match &answer.error {
            None => self.metrics().send_duration.observe(started.elapsed()),
            Some(e) => self.metrics().rejected(e.kind.code()),
        }
        Ok(resp)
    }

    /// `POST /api/v1/sms/send-batch` `{"messages": [send request, ...]}`: one result per item,
    /// in order, each a send answer or `{success: false, error, code}`. 200 whenever the
    /// envelope was valid (items carry their own errors); 4xx only for the envelope.
    async fn send_batch(&self, req: &Request<'_>) -> Result<Response, ApiError> {
        #[derive(Deserialize)]
        struct BatchBody {
            messages: Option<Vec<serde_json::Value>>,
        }
        let body: BatchBody = parse_json(req.body)?;
        let messages = body.messages.ok_or_else(|| missing("messages"))?;
        if messages.is_empty() {
            return Err(ApiError::new(
                ErrorKind::InvalidField,
                "`messages` is empty; send 1..=1000 messages",
            ));
        }
        if messages.len() > BATCH_MAX_ITEMS {
            return Err(ApiError::new(
                ErrorKind::InvalidField,
                format!(
                    "`messages` holds {} items, at most {BATCH_MAX_ITEMS} per batch",
                    messages.len()
                ),
            ));
        }
        // Each item is checked on its own: a bad item is that item's error, not the batch's.
        let inputs: Vec<Result<SendInput, ApiError>> = messages
            .iter()
            .map(|v| {
                SendBody::deserialize(v)
                    .map_err(|e| ApiError::new(ErrorKind::InvalidField, e.to_string()))
                    .and_then(SendBody::into_input)
            })
            .collect();
        drop(messages);
        let meta = BatchMeta::new(client_ip(req), req.headers());
        let results = self.pipeline.send_batch(inputs, meta).await;
        let mut accepted = 0usize;
        let mut views = Vec::with_capacity(results.len());
        for r in &results {
            match r {
                Ok(answer) => {
                    match &answer.error {
                        None => accepted += 1,
                        Some(e) => self.metrics().rejected(e.kind.code()),
                    }
                    views.push(BatchItemView::Answer(SendView::from(answer)));
                }
                Err(e) => {
                    self.metrics().rejected(e.kind.code());
                    views.push(BatchItemView::Error {
                        success: false,
                        error: &e.message,
                        code: e.kind.code(),
                    });
                }
            }
        }
        Ok(json(
            200,
            &BatchView {
                accepted,
                failed: results.len() - accepted,
                results: views,
            },
        ))
    }

    /// `POST /api/v1/user/login` `{"app_id": 1, "secret": "..."}` → a JWT.
    async fn login(&self, req: &Request<'_>) -> Result<Response, ApiError> {
        #[derive(Deserialize)]
        struct LoginBody<'a> {
            app_id: Option<NumberOrString<'a>>,
            #[serde(borrow, alias = "password")]
            secret: Option<Cow<'a, str>>,
        }
        let body: LoginBody<'_> = parse_json(req.body)?;
        let app_id = match body.app_id.ok_or_else(|| missing("app_id"))? {
            NumberOrString::Number(n) => Some(n),
            NumberOrString::Text(s) => s.trim().parse::<u64>().ok(),
        }
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidField,
                "`app_id` must be a positive integer",
            )
        })?;
        let secret = body.secret.ok_or_else(|| missing("secret"))?;
        let answer = self
            .pipeline
            .shared
            .auth
            .login_offloaded(app_id, secret.into_owned(), client_ip(req))
            .await?;
        Ok(json(200, &answer))
    }

    /// `/api/v1/admin/*`, guarded by `X-Admin-Key` (checked before the path is looked at).
    fn admin(&self, path: &str, req: &Request<'_>) -> Result<Response, ApiError> {
        let auth = &self.pipeline.shared.auth;
        auth.check_admin(req.header_str("x-admin-key"))?;
        let get = matches!(req.method, Method::Get | Method::Head);
        match (path, get, req.method == Method::Post) {
            ("reload", _, true) => match auth.reload() {
                Ok(n) => Ok(json(200, &serde_json::json!({"reloaded": true, "apps": n}))),
                Err(errors) => Ok(json(
                    422,
                    &serde_json::json!({
                        "error": "apps file refused; previous apps kept",
                        "code": "invalid_apps_file",
                        "problems": errors,
                    }),
                )),
            },
            ("apps", true, _) => Ok(json(200, &auth.app_views())),
            ("reload" | "apps", _, _) => Err(ApiError::new(
                ErrorKind::MethodNotAllowed,
                "method not allowed on this path",
            )),
            _ => Err(ApiError::new(ErrorKind::NotFound, "no such route")),
        }
    }

    fn check_text_len(&self, req: &Request<'_>) -> Result<Response, ApiError> {
        let body: TextLenBody<'_> = parse_json(req.body)?;
        let message = body.message.ok_or_else(|| missing("message"))?;
        let encoding = parse_encoding(body.encoding.as_deref())?;
        let info = self
            .pipeline
            .check_text_len(&message, encoding, body.esme)?;
        Ok(json(
            200,
            &serde_json::json!({
                "encoding": info.encoding.name(),
                "data_coding": info.data_coding,
                "parts": info.parts,
                "units": info.units,
                "unit": info.encoding.unit_name(),
                "octets": info.octets,
                "units_per_part": info.units_per_part,
                "remaining_in_last_part": info.remaining_in_last_part,
                "message_payload": info.message_payload,
                "characters": message.chars().count(),
            }),
        ))
    }
}

/// The client's address (for IP allow-lists). Only an in-process caller has none.
fn client_ip(req: &Request<'_>) -> IpAddr {
    req.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn json<T: Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(status, body),
        Err(e) => ApiError::new(ErrorKind::Internal, format!("cannot serialise answer: {e}"))
            .to_response(),
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::new(ErrorKind::MissingField, format!("missing field `{field}`"))
}

/// Syntax errors are 400 `invalid_json`; a well-formed document with a wrong type is 422.
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorKind::InvalidJson,
            "request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(ErrorKind::InvalidField, e.to_string()),
        _ => ApiError::new(ErrorKind::InvalidJson, format!("malformed JSON: {e}")),
    })
}

fn parse_encoding(name: Option<&str>) -> Result<Option<Encoding>, ApiError> {
    match name {
        None => Ok(None),
        Some(n) if n.eq_ignore_ascii_case("auto") || n.is_empty() => Ok(None),
        Some(n) => n.parse::<Encoding>().map(Some).map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidField,
                format!("unknown encoding {n:?} (expected auto, gsm7, latin1 or ucs2)"),
            )
        }),
    }
}

/// `esme` as the reference sends it: a number, or a string holding one.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString<'a> {
    Number(u64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

#[derive(Deserialize)]
struct SendBody<'a> {
    esme: Option<NumberOrString<'a>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    destination: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    transaction_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    encoding: Option<Cow<'a, str>>,
    #[serde(borrow)]
    callback_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    strategy: Option<Cow<'a, str>>,
}

impl SendBody<'_> {
    fn into_input(self) -> Result<SendInput, ApiError> {
        let esme = match self.esme.ok_or_else(|| missing("esme"))? {
            NumberOrString::Number(n) => u32::try_from(n).ok(),
            NumberOrString::Text(s) => s.trim().parse::<u32>().ok(),
        }
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidField,
                "`esme` must be a positive link or pool id",
            )
        })?;
        Ok(SendInput {
            esme,
            source: self.source.ok_or_else(|| missing("source"))?.into_owned(),
            destination: self
                .destination
                .ok_or_else(|| missing("destination"))?
                .into_owned(),
            message: self.message.ok_or_else(|| missing("message"))?.into_owned(),
            transaction_id: self.transaction_id.map(Cow::into_owned),
            encoding: parse_encoding(self.encoding.as_deref())?,
            callback_url: self.callback_url.map(Cow::into_owned),
            strategy: self.strategy.map(Cow::into_owned),
        })
    }
}

#[derive(Deserialize)]
struct TextLenBody<'a> {
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    encoding: Option<Cow<'a, str>>,
    /// Optional link/pool whose segmentation settings apply (default: UDH 8-bit, 10 parts).
    esme: Option<u32>,
}

/// The answer to a send: the reference's fields plus ours.
#[derive(Serialize)]
struct SendView<'a> {
    success: bool,
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    esme: u32,
    transaction_id: &'a str,
    parts: usize,
    encoding: &'static str,
    message_ids: &'a [String],
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<u32>,
    /// True when this transaction_id was seen before and nothing was sent again.
    duplicate: bool,
}

impl<'a> From<&'a SendAnswer> for SendView<'a> {
    fn from(a: &'a SendAnswer) -> Self {
        SendView {
            success: a.error.is_none(),
            error: a.error.as_ref().map(|e| &*e.message),
            code: a.error.as_ref().map(|e| e.kind.code()),
            esme: a.esme,
            transaction_id: &a.transaction_id,
            parts: a.parts,
            encoding: a.encoding,
            message_ids: &a.message_ids,
            status: a.status.as_str(),
            link: a.link,
            duplicate: a.duplicate,
        }
    }
}

/// The answer to a batch submit.
#[derive(Serialize)]
struct BatchView<'a> {
    /// Items that were submitted successfully.
    accepted: usize,
    /// Items with an error (`results[i].success == false`).
    failed: usize,
    results: Vec<BatchItemView<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchItemView<'a> {
    /// The item reached the pipeline: the same object a single send answers.
    Answer(SendView<'a>),
    /// Refused before anything was recorded: the same `{error, code}` as a single send.
    Error {
        success: bool,
        error: &'a str,
        code: &'static str,
    },
}

#[derive(Serialize)]
struct StatusView<'a> {
    transaction_id: &'a str,
    app_id: u64,
    esme: u32,
    link: Option<u32>,
    source: &'a str,
    destination: &'a str,
    status: &'static str,
    encoding: &'static str,
    parts: Vec<PartView<'a>>,
    created_at_ms: u64,
    updated_at_ms: u64,
    expires_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a str>,
}

#[derive(Serialize)]
struct PartView<'a> {
    index: u16,
    status: &'static str,
    link: Option<u32>,
    message_id: Option<&'a str>,
    error_code: Option<u32>,
    submitted_at_ms: Option<u64>,
    receipt: Option<ReceiptView<'a>>,
}

#[derive(Serialize)]
struct ReceiptView<'a> {
    status: &'static str,
    stat: &'a str,
    err: Option<&'a str>,
    done_at_ms: Option<u64>,
    received_at_ms: u64,
}

impl<'a> StatusView<'a> {
    fn from_record(r: &'a crate::state::MessageRecord) -> Self {
        use crate::state::Encoding as E;
        StatusView {
            transaction_id: &r.transaction_id,
            app_id: r.app_id,
            esme: r.esme,
            link: r.link_id,
            source: &r.source,
            destination: &r.destination,
            status: r.status.as_str(),
            encoding: match r.encoding {
                E::Gsm7 => "gsm7",
                E::Latin1 => "latin1",
                E::Ucs2 => "ucs2",
            },
            parts: r
                .parts
                .iter()
                .map(|p| PartView {
                    index: p.index,
                    status: p.status.as_str(),
                    link: p.link_id,
                    message_id: p.smsc_message_id.as_deref(),
                    error_code: p.error_code,
                    submitted_at_ms: p.submitted_at_ms,
                    receipt: p.receipt.as_ref().map(|rc| ReceiptView {
                        status: rc.status.as_str(),
                        stat: &rc.stat,
                        err: rc.err.as_deref(),
                        done_at_ms: rc.done_at_ms,
                        received_at_ms: rc.received_at_ms,
                    }),
                })
                .collect(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            expires_at_ms: r.expires_at_ms,
            callback_url: r.callback_url.as_deref(),
        }
    }
}

/// Decodes `%XX` escapes of a path segment; `None` if the result is not UTF-8 or an escape is
/// broken.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_classified() {
        let e = parse_json::<SendBody<'_>>(b"{not json").err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidJson);
        let e = parse_json::<SendBody<'_>>(b"").err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidJson);
        let e = parse_json::<SendBody<'_>>(br#"{"source": 5}"#)
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidField);
        let e = parse_json::<SendBody<'_>>(b"[1,2]").err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidField);
    }

    #[test]
    fn send_body_fields() {
        let b: SendBody<'_> = parse_json(
            br#"{"esme":"100","source":"A","destination":"+1","message":"hi\n","extra":1}"#,
        )
        .unwrap();
        let i = b.into_input().unwrap();
        assert_eq!((i.esme, i.message.as_str()), (100, "hi\n"));
        let b: SendBody<'_> =
            parse_json(br#"{"esme":100,"source":"A","destination":"1"}"#).unwrap();
        assert_eq!(b.into_input().err().unwrap().kind, ErrorKind::MissingField);
        // A negative id matches neither variant: a type error in a well-formed document.
        let e = parse_json::<SendBody<'_>>(
            br#"{"esme":-1,"source":"A","destination":"1","message":"x"}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidField);
        let b: SendBody<'_> =
            parse_json(br#"{"esme":"x","source":"A","destination":"1","message":"x"}"#).unwrap();
        assert_eq!(b.into_input().err().unwrap().kind, ErrorKind::InvalidField);
        let b: SendBody<'_> = parse_json(
            br#"{"esme":1,"source":"A","destination":"1","message":"x","encoding":"klingon"}"#,
        )
        .unwrap();
        assert_eq!(b.into_input().err().unwrap().kind, ErrorKind::InvalidField);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc").unwrap(), "abc");
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert!(percent_decode("a%2").is_none());
        assert!(percent_decode("%ff").is_none());
    }
}
