//! The benchmark's floor (variant b): the least a body-routing filter must do — hold the request
//! headers, buffer the body, set one header — so model-router's own cost can be told apart from
//! the cost of running any Wasm filter that reads the body.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;
    impl Context for Root {}
    impl RootContext for Root {
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Floor;
    impl Context for Floor {}
    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            if end_of_stream {
                self.set_http_request_header("x-floor", Some("1"));
                return Action::Continue;
            }
            Action::Pause
        }
        fn on_http_request_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            self.set_http_request_header("x-floor", Some("1"));
            Action::Continue
        }
    }
}
