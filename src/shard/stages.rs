//! Admission stages: authentication, limits and contact policy, each one slot in the pipeline.
//!
//! A stage sees the validated message and the request's metadata and either lets it pass,
//! rejects it with an `ApiError`, or needs to wait (e.g. an L2 limit lease from Redis). The
//! synchronous answers cost nothing: only a stage that really waits allocates a future.
//! The stages that exist today are no-ops; the auth/limits/policy work replaces them.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::api::ApiError;

/// What a stage may look at besides the message: the caller and its headers.
pub struct RequestMeta<'a> {
    pub client_ip: IpAddr,
    /// Header lookup (ASCII case-insensitive), e.g. `authorization`, `x-app-id`.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// The part of a send request the stages decide on. `app_id` is set by authentication.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Tenant; 0 until an authentication stage sets it.
    pub app_id: u64,
    pub esme: u32,
    pub destination: String,
    pub text_len_chars: usize,
    /// SMPP parts the message needs (limits count parts, not requests).
    pub parts: usize,
    /// Contact-policy strategy asked for by the request (`cp1`, `cp2`, `blacklist`, ...).
    pub strategy: Option<String>,
    /// `policy::text_hash` of the message text (contact policy CP2); 0 when there is none.
    pub text_hash: u64,
}

pub type StageFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ApiError>> + 'a>>;

pub enum Verdict<'a> {
    Pass,
    Reject(ApiError),
    /// The stage must wait for something (a remote limiter, a policy service).
    Wait(StageFuture<'a>),
}

/// One admission concern. Implementations live on one shard (`!Send` state is fine).
pub trait Stage {
    fn name(&self) -> &'static str;
    fn check<'s>(&'s self, admission: &'s mut Admission, meta: &'s RequestMeta<'_>) -> Verdict<'s>;
}

/// The stage that lets everything through (the slot is there, the concern is not yet).
pub struct PassThrough(pub &'static str);

impl Stage for PassThrough {
    fn name(&self) -> &'static str {
        self.0
    }

    fn check<'s>(
        &'s self,
        _admission: &'s mut Admission,
        _meta: &'s RequestMeta<'_>,
    ) -> Verdict<'s> {
        Verdict::Pass
    }
}

/// The admission stages in pipeline order: auth → limit → policy.
pub struct Stages {
    pub auth: Box<dyn Stage>,
    pub limit: Box<dyn Stage>,
    pub policy: Box<dyn Stage>,
}

impl Default for Stages {
    fn default() -> Self {
        Stages {
            auth: Box::new(PassThrough("auth")),
            limit: Box::new(PassThrough("limit")),
            policy: Box::new(PassThrough("policy")),
        }
    }
}

impl Stages {
    /// Runs the stages in order; the first rejection wins.
    pub async fn admit(
        &self,
        admission: &mut Admission,
        meta: &RequestMeta<'_>,
    ) -> Result<(), ApiError> {
        for stage in [&self.auth, &self.limit, &self.policy] {
            match stage.check(&mut *admission, meta) {
                Verdict::Pass => {}
                Verdict::Reject(e) => return Err(e),
                Verdict::Wait(f) => f.await?,
            }
        }
        Ok(())
    }

    /// Authentication only (status lookups need to know the app, not limits or policy).
    pub async fn authenticate(
        &self,
        admission: &mut Admission,
        meta: &RequestMeta<'_>,
    ) -> Result<(), ApiError> {
        match self.auth.check(admission, meta) {
            Verdict::Pass => Ok(()),
            Verdict::Reject(e) => Err(e),
            Verdict::Wait(f) => f.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorKind;

    struct RejectOver(usize);

    impl Stage for RejectOver {
        fn name(&self) -> &'static str {
            "limit"
        }
        fn check<'s>(&'s self, a: &'s mut Admission, _m: &'s RequestMeta<'_>) -> Verdict<'s> {
            if a.parts > self.0 {
                Verdict::Reject(
                    ApiError::new(ErrorKind::RateLimited, "too many parts").retry_after(1),
                )
            } else {
                Verdict::Pass
            }
        }
    }

    struct SetApp;

    impl Stage for SetApp {
        fn name(&self) -> &'static str {
            "auth"
        }
        fn check<'s>(&'s self, a: &'s mut Admission, m: &'s RequestMeta<'_>) -> Verdict<'s> {
            Verdict::Wait(Box::pin(async move {
                a.app_id = (m.header)("x-app-id")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(())
            }))
        }
    }

    #[test]
    fn stages_run_in_order_and_first_rejection_wins() {
        let stages = Stages {
            auth: Box::new(SetApp),
            limit: Box::new(RejectOver(2)),
            ..Stages::default()
        };
        let lookup = |name: &str| (name == "x-app-id").then_some("42");
        let meta = RequestMeta {
            client_ip: [127, 0, 0, 1].into(),
            header: &lookup,
        };
        let mut a = Admission {
            app_id: 0,
            esme: 1,
            destination: "1".into(),
            text_len_chars: 1,
            parts: 1,
            strategy: None,
            text_hash: 0,
        };
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            stages.admit(&mut a, &meta).await.unwrap();
            assert_eq!(a.app_id, 42);
            a.parts = 3;
            let e = stages.admit(&mut a, &meta).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::RateLimited);
        });
    }
}
