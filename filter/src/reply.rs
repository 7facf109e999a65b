//! The filter's own error replies, in the OpenAI error envelope.

/// Why a request was turned away. The code is also the `reason` label of `model_router_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    ModelNotFound,
    InvalidJson,
    /// A body labelled `multipart/*` that is not a form read the same way by every parser.
    InvalidForm,
    ModelRequired,
    BodyTooLarge,
    ModelAccessDenied,
    RateLimitExceeded,
    DuplicateModel,
    /// Held headers whose body never came (a host that cannot hold, or a client that stalls),
    /// where letting the request through unchecked would skip access control or limits.
    BodyNotReceived,
    /// A global limit could not be checked (the rate limit service did not answer in time) and
    /// `rateLimitService.failureMode` is `deny`.
    RateLimitUnavailable,
    /// Every destination of the model and every fallback is open (`failover`).
    ModelUnavailable,
    /// The proxy refused to set the routing header (or to recompute the route): the request
    /// would go wherever the headers it has lead, not where the filter chose.
    RouteFailed,
}

impl RejectReason {
    #[cfg(test)]
    pub const ALL: [RejectReason; 12] = [
        RejectReason::ModelNotFound,
        RejectReason::InvalidJson,
        RejectReason::InvalidForm,
        RejectReason::ModelRequired,
        RejectReason::BodyTooLarge,
        RejectReason::ModelAccessDenied,
        RejectReason::RateLimitExceeded,
        RejectReason::DuplicateModel,
        RejectReason::BodyNotReceived,
        RejectReason::RateLimitUnavailable,
        RejectReason::ModelUnavailable,
        RejectReason::RouteFailed,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::ModelNotFound => "model_not_found",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidForm => "invalid_form",
            RejectReason::ModelRequired => "model_required",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::ModelAccessDenied => "model_access_denied",
            RejectReason::RateLimitExceeded => "rate_limit_exceeded",
            RejectReason::DuplicateModel => "duplicate_model",
            RejectReason::BodyNotReceived => "body_not_received",
            RejectReason::RateLimitUnavailable => "rate_limit_unavailable",
            RejectReason::ModelUnavailable => "model_unavailable",
            RejectReason::RouteFailed => "route_failed",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            RejectReason::ModelNotFound => 404,
            RejectReason::InvalidJson
            | RejectReason::InvalidForm
            | RejectReason::ModelRequired
            | RejectReason::DuplicateModel => 400,
            RejectReason::BodyTooLarge => 413,
            RejectReason::ModelAccessDenied => 403,
            RejectReason::RateLimitExceeded => 429,
            RejectReason::BodyNotReceived | RejectReason::RateLimitUnavailable | RejectReason::ModelUnavailable => 503,
            RejectReason::RouteFailed => 500,
        }
    }
}

/// A local reply for the glue to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub message: String,
    /// The envelope's `type`: `invalid_request_error`, or OpenAI's `requests` / `tokens` for 429s.
    pub error_type: String,
    /// Extra response headers (`retry-after`, `x-ratelimit-*`).
    pub headers: Vec<(String, String)>,
}

impl Reject {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Reject {
            reason,
            message: message.into(),
            error_type: "invalid_request_error".into(),
            headers: Vec::new(),
        }
    }

    pub fn status(&self) -> u32 {
        self.reason.status()
    }

    /// `{"error":{"message":…,"type":"invalid_request_error","param":"model","code":…}}`
    /// (rate limits: OpenAI's `"type":"requests"|"tokens","param":null`).
    pub fn body(&self) -> Vec<u8> {
        let param = match self.reason {
            RejectReason::RateLimitExceeded
            | RejectReason::BodyNotReceived
            | RejectReason::RateLimitUnavailable
            | RejectReason::ModelUnavailable
            | RejectReason::RouteFailed => "null",
            _ => "\"model\"",
        };
        let mut out = String::from("{\"error\":{\"message\":");
        crate::json::write_str(&mut out, &self.message);
        out.push_str(",\"type\":");
        crate::json::write_str(&mut out, &self.error_type);
        out.push_str(",\"param\":");
        out.push_str(param);
        out.push_str(",\"code\":");
        crate::json::write_str(&mut out, self.reason.code());
        out.push_str("}}");
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let r = Reject::new(RejectReason::ModelNotFound, "The model `x\"y` does not exist.");
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["message"], "The model `x\"y` does not exist.");
        assert_eq!(r.status(), 404);
        let statuses: Vec<u32> = RejectReason::ALL.iter().map(|r| r.status()).collect();
        assert_eq!(statuses, [404, 400, 400, 400, 413, 403, 429, 400, 503, 503, 503, 500]);
    }
}
