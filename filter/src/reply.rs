//! The filter's own error replies, in the OpenAI error envelope.

/// Why a request was turned away. The code is also the `reason` label of `model_router_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    ModelNotFound,
    InvalidJson,
    ModelRequired,
    BodyTooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::ModelNotFound,
        RejectReason::InvalidJson,
        RejectReason::ModelRequired,
        RejectReason::BodyTooLarge,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::ModelNotFound => "model_not_found",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::ModelRequired => "model_required",
            RejectReason::BodyTooLarge => "body_too_large",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            RejectReason::ModelNotFound => 404,
            RejectReason::InvalidJson | RejectReason::ModelRequired => 400,
            RejectReason::BodyTooLarge => 413,
        }
    }
}

/// A local reply for the glue to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub message: String,
}

impl Reject {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Reject {
            reason,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u32 {
        self.reason.status()
    }

    /// `{"error":{"message":…,"type":"invalid_request_error","param":"model","code":…}}`
    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": "model",
                "code": self.reason.code(),
            }
        });
        v.to_string().into_bytes()
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
        assert_eq!(statuses, [404, 400, 400, 413]);
    }
}
