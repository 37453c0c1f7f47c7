//! Which call a handler runs for, so that what the script logs
//! (`log.info(...)`) carries the call's `call_id`, and its `trace_id` when
//! the call is traced, in the pretty and the JSON log alike.

use std::cell::RefCell;
use std::sync::Arc;

use crate::sip::Message;

thread_local! {
    static CALL: RefCell<Option<(Arc<Message>, Option<String>)>> = const { RefCell::new(None) };
}

/// The run of a handler for `msg`; the call is forgotten when it drops.
pub(super) struct About(());

pub(super) fn about(msg: &Arc<Message>, trace_id: Option<&str>) -> About {
    CALL.with(|call| *call.borrow_mut() = Some((msg.clone(), trace_id.map(str::to_string))));
    About(())
}

impl Drop for About {
    fn drop(&mut self) {
        CALL.with(|call| call.borrow_mut().take());
    }
}

/// Calls `log` with the Call-ID and trace id of the handler running on
/// this thread (None outside one, e.g. in `@gateway.on_change`).
pub(super) fn with_call(log: impl FnOnce(Option<&str>, Option<&str>)) {
    CALL.with(|call| match &*call.borrow() {
        Some((msg, trace_id)) => log(msg.call_id(), trace_id.as_deref()),
        None => log(None, None),
    })
}
