//! The one error type every ingress answers with, and the one place that maps its kind to an
//! HTTP status and a stable machine-readable code. gRPC status codes (and SMPP command_status
//! where a gateway error must be told to an SMSC) are mapped from the same `ErrorKind`.

use std::borrow::Cow;

use super::http::{self, Response};

/// Who caused an error: decides logging level and whether an operator should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller sent something wrong; nothing to fix on our side.
    Client,
    /// An SMSC, store or other dependency failed or is unavailable.
    Upstream,
    /// A bug or an exhausted internal bound.
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidJson,
    MissingField,
    InvalidField,
    /// `callback_url` is not an absolute http(s) URL without credentials, or is too long.
    InvalidCallbackUrl,
    InvalidAddress,
    EmptyMessage,
    TooManyParts,
    UnknownEsme,
    UnknownTransaction,
    /// A `transaction_id` reused with a different request.
    DuplicateTransaction,
    NotFound,
    MethodNotAllowed,
    BodyTooLarge,
    Unauthorized,
    Forbidden,
    RateLimited,
    PolicyRejected,
    NoRoute,
    Overloaded,
    StateUnavailable,
    /// The SMSC refused the message (a submit_sm_resp with an error status).
    SubmitRejected,
    /// Submission failed for a transport reason before the SMSC answered.
    SubmitFailed,
    Timeout,
    ShuttingDown,
    Internal,
    // Authentication / authorization (see docs/security.md).
    MissingAuthorization,
    MissingAppId,
    InvalidAppId,
    UnknownApp,
    InvalidToken,
    /// The token is valid but for another app than `X-App-ID`.
    AppIdMismatch,
    AppDisabled,
    IpNotAllowed,
    EsmeNotAllowed,
    InvalidCredentials,
    InvalidAdminKey,
    /// `ADMIN_API_KEY` is unset (or login asked of a gateway with authentication off).
    AdminDisabled,
    // Contact policy (docs/limits-and-policy.md): the code is the reference `state`.
    PolicyBlacklist,
    PolicyDuplicate,
    PolicyDailyCap,
    PolicyWeeklyCap,
}

impl ErrorKind {
    /// Every kind, in declaration order: for exporters and tests that enumerate them
    /// (`metrics` keeps a `reason` label slot per code). The exhaustive match in the test
    /// `all_lists_every_kind` stops compiling when a kind is added without being listed here.
    pub const ALL: [ErrorKind; 41] = [
        ErrorKind::InvalidJson,
        ErrorKind::MissingField,
        ErrorKind::InvalidField,
        ErrorKind::InvalidCallbackUrl,
        ErrorKind::InvalidAddress,
        ErrorKind::EmptyMessage,
        ErrorKind::TooManyParts,
        ErrorKind::UnknownEsme,
        ErrorKind::UnknownTransaction,
        ErrorKind::DuplicateTransaction,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::BodyTooLarge,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::RateLimited,
        ErrorKind::PolicyRejected,
        ErrorKind::NoRoute,
        ErrorKind::Overloaded,
        ErrorKind::StateUnavailable,
        ErrorKind::SubmitRejected,
        ErrorKind::SubmitFailed,
        ErrorKind::Timeout,
        ErrorKind::ShuttingDown,
        ErrorKind::Internal,
        ErrorKind::MissingAuthorization,
        ErrorKind::MissingAppId,
        ErrorKind::InvalidAppId,
        ErrorKind::UnknownApp,
        ErrorKind::InvalidToken,
        ErrorKind::AppIdMismatch,
        ErrorKind::AppDisabled,
        ErrorKind::IpNotAllowed,
        ErrorKind::EsmeNotAllowed,
        ErrorKind::InvalidCredentials,
        ErrorKind::InvalidAdminKey,
        ErrorKind::AdminDisabled,
        ErrorKind::PolicyBlacklist,
        ErrorKind::PolicyDuplicate,
        ErrorKind::PolicyDailyCap,
        ErrorKind::PolicyWeeklyCap,
    ];
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        use ErrorKind::*;
        match self {
            InvalidJson => 400,
            MissingField | InvalidField | InvalidAddress | EmptyMessage | TooManyParts => 422,
            InvalidCallbackUrl => 422,
            UnknownEsme | UnknownTransaction | NotFound => 404,
            DuplicateTransaction => 409,
            MethodNotAllowed => 405,
            BodyTooLarge => 413,
            Unauthorized => 401,
            Forbidden | PolicyRejected => 403,
            RateLimited => 429,
            NoRoute | Overloaded | StateUnavailable | ShuttingDown => 503,
            SubmitRejected | SubmitFailed => 502,
            Timeout => 504,
            Internal => 500,
            InvalidAppId => 400,
            MissingAuthorization | MissingAppId | UnknownApp | InvalidToken | AppIdMismatch
            | InvalidCredentials | InvalidAdminKey => 401,
            AppDisabled | IpNotAllowed | EsmeNotAllowed => 403,
            AdminDisabled => 503,
            PolicyBlacklist | PolicyDuplicate => 403,
            PolicyDailyCap | PolicyWeeklyCap => 429,
        }
    }

    /// Stable code for clients; never rename one, only add.
    pub fn code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidJson => "invalid_json",
            MissingField => "missing_field",
            InvalidField => "invalid_field",
            InvalidCallbackUrl => "invalid_callback_url",
            InvalidAddress => "invalid_address",
            EmptyMessage => "empty_message",
            TooManyParts => "too_many_parts",
            UnknownEsme => "unknown_esme",
            UnknownTransaction => "unknown_transaction",
            DuplicateTransaction => "duplicate_transaction",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            BodyTooLarge => "body_too_large",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            RateLimited => "rate_limited",
            PolicyRejected => "policy_rejected",
            NoRoute => "no_route",
            Overloaded => "overloaded",
            StateUnavailable => "state_unavailable",
            SubmitRejected => "submit_rejected",
            SubmitFailed => "submit_failed",
            Timeout => "timeout",
            ShuttingDown => "shutting_down",
            Internal => "internal",
            MissingAuthorization => "missing_authorization",
            MissingAppId => "missing_app_id",
            InvalidAppId => "invalid_app_id",
            UnknownApp => "unknown_app_id",
            InvalidToken => "invalid_token",
            AppIdMismatch => "app_id_mismatch",
            AppDisabled => "app_disabled",
            IpNotAllowed => "ip_not_allowed",
            EsmeNotAllowed => "esme_not_allowed",
            InvalidCredentials => "invalid_credentials",
            InvalidAdminKey => "invalid_admin_key",
            AdminDisabled => "admin_disabled",
            PolicyBlacklist => "blacklist",
            PolicyDuplicate => "duplicate",
            PolicyDailyCap => "daily_cp",
            PolicyWeeklyCap => "weekly_cp",
        }
    }

    pub fn source(self) -> Source {
        use ErrorKind::*;
        match self {
            NoRoute | StateUnavailable | SubmitRejected | SubmitFailed | Timeout => {
                Source::Upstream
            }
            Overloaded | ShuttingDown | Internal | AdminDisabled => Source::Internal,
            _ => Source::Client,
        }
    }

    /// Whether the same request may succeed if retried later unchanged.
    pub fn retryable(self) -> bool {
        use ErrorKind::*;
        matches!(
            self,
            RateLimited
                | PolicyDailyCap
                | PolicyWeeklyCap
                | NoRoute
                | Overloaded
                | StateUnavailable
                | SubmitFailed
                | Timeout
                | ShuttingDown
        )
    }

    /// gRPC status code (numeric, per the gRPC spec) for the same failure.
    pub fn grpc_code(self) -> i32 {
        use ErrorKind::*;
        match self {
            InvalidJson | MissingField | InvalidField | InvalidAddress | EmptyMessage
            | TooManyParts => 3, // INVALID_ARGUMENT
            InvalidCallbackUrl => 3,
            UnknownEsme | UnknownTransaction | NotFound => 5, // NOT_FOUND
            DuplicateTransaction => 6,                        // ALREADY_EXISTS
            Forbidden | PolicyRejected => 7,                  // PERMISSION_DENIED
            RateLimited => 8,                                 // RESOURCE_EXHAUSTED
            MethodNotAllowed => 12,                           // UNIMPLEMENTED
            BodyTooLarge => 8,
            Unauthorized => 16, // UNAUTHENTICATED
            NoRoute | Overloaded | StateUnavailable | ShuttingDown | SubmitFailed => 14, // UNAVAILABLE
            SubmitRejected => 9, // FAILED_PRECONDITION
            Timeout => 4,        // DEADLINE_EXCEEDED
            Internal => 13,
            InvalidAppId => 3,
            MissingAuthorization | MissingAppId | UnknownApp | InvalidToken | AppIdMismatch
            | InvalidCredentials | InvalidAdminKey => 16,
            AppDisabled | IpNotAllowed | EsmeNotAllowed => 7,
            AdminDisabled => 14,
            PolicyBlacklist | PolicyDuplicate => 7, // PERMISSION_DENIED
            PolicyDailyCap | PolicyWeeklyCap => 8,  // RESOURCE_EXHAUSTED
        }
    }
}

/// An error with its kind, a human message, and optional retry hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn to_response(&self) -> Response {
        let resp = Response::json(
            self.kind.http_status(),
            http::error_body(&self.message, self.kind.code()),
        );
        match self.retry_after_s {
            Some(s) => resp.with_header("retry-after", s.to_string()),
            None => resp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_never_5xx() {
        use ErrorKind::*;
        for k in [
            InvalidJson,
            MissingField,
            InvalidField,
            InvalidCallbackUrl,
            InvalidAddress,
            EmptyMessage,
            TooManyParts,
            UnknownEsme,
            UnknownTransaction,
            DuplicateTransaction,
            NotFound,
            MethodNotAllowed,
            BodyTooLarge,
            Unauthorized,
            Forbidden,
            RateLimited,
            PolicyRejected,
            MissingAuthorization,
            MissingAppId,
            InvalidAppId,
            UnknownApp,
            InvalidToken,
            AppIdMismatch,
            AppDisabled,
            IpNotAllowed,
            EsmeNotAllowed,
            InvalidCredentials,
            InvalidAdminKey,
        ] {
            assert_eq!(k.source(), Source::Client, "{k:?}");
            assert!((400..500).contains(&k.http_status()), "{k:?}");
        }
    }

    #[test]
    fn all_lists_every_kind() {
        use ErrorKind::*;
        // Exhaustive: a new kind fails to compile here until it is added to `ALL`.
        fn position(k: ErrorKind) -> Option<usize> {
            match k {
                InvalidJson | MissingField | InvalidField | InvalidAddress | EmptyMessage
                | TooManyParts | UnknownEsme | UnknownTransaction | DuplicateTransaction
                | NotFound | MethodNotAllowed | BodyTooLarge | Unauthorized | Forbidden
                | RateLimited | PolicyRejected | NoRoute | Overloaded | StateUnavailable
                | SubmitRejected | SubmitFailed | Timeout | ShuttingDown | Internal
                | MissingAuthorization | MissingAppId | InvalidAppId | UnknownApp
                | InvalidToken | AppIdMismatch | AppDisabled | IpNotAllowed | EsmeNotAllowed
                | InvalidCredentials | InvalidAdminKey | AdminDisabled | PolicyBlacklist
                | PolicyDuplicate | PolicyDailyCap | PolicyWeeklyCap | InvalidCallbackUrl => {
                    ErrorKind::ALL.iter().position(|x| *x == k)
                }
            }
        }
        for k in ErrorKind::ALL {
            assert!(position(k).is_some());
        }
        let mut codes: Vec<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(
            codes.len(),
            ErrorKind::ALL.len(),
            "every kind has its own code"
        );
    }

    #[test]
    fn response_has_code_and_retry_after() {
        let r = ApiError::new(ErrorKind::RateLimited, "slow down")
            .retry_after(2)
            .to_response();
        assert_eq!(r.status, 429);
        assert_eq!(r.body, br#"{"error":"slow down","code":"rate_limited"}"#);
        assert_eq!(r.headers, vec![("retry-after", "2".to_string())]);
    }
}
