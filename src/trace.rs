//! Steps of one login, for the troubleshooting command: each layer notes what it did (endpoint and
//! status, claims that decided, cache state). Outside a traced login `note` costs one task-local
//! lookup and builds nothing.

use std::cell::RefCell;
use std::future::Future;

tokio::task_local! {
    static STEPS: RefCell<Vec<String>>;
}

/// Records a step if the current login is being traced. Never pass a token or secret.
pub fn note(step: impl FnOnce() -> String) {
    let _ = STEPS.try_with(|s| s.borrow_mut().push(step()));
}

/// Runs `fut` with tracing on and returns its output with the steps noted.
pub async fn traced<F: Future>(fut: F) -> (F::Output, Vec<String>) {
    STEPS
        .scope(RefCell::new(Vec::new()), async {
            let out = fut.await;
            (out, STEPS.with(|s| s.take()))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_collected_only_inside_a_traced_run() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            note(|| panic!("not built outside a trace"));
            let ((), steps) = traced(async { note(|| "one".into()) }).await;
            assert_eq!(steps, vec!["one".to_string()]);
        });
    }
}
