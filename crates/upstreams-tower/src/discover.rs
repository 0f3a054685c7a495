//! Driving a list from a discovery stream.

use futures_core::Stream;
use futures_util::StreamExt;
use upstreams::{Change, Entry, MembershipChange, UpstreamList};

/// The most changes applied in one membership swap.
const BATCH: usize = 1024;

/// Applies the changes `source` yields to `list` until the stream ends: what arrives
/// together (up to 1 024 changes ready at once) is applied in one swap, so a burst of
/// discovery events rebuilds the list once. Upstreams that stay keep their health and
/// in-flight counts; removed ones drain. Returns every change made, in order.
///
/// Spawn it next to the service that uses the list; the list itself is shared by `Arc`.
pub async fn discover<St>(list: &UpstreamList, source: St) -> MembershipChange
where
    St: Stream<Item = Change>,
{
    let mut batches = std::pin::pin!(source.ready_chunks(BATCH));
    let mut all = MembershipChange::default();
    while let Some(batch) = batches.next().await {
        let swap = list.apply(batch);
        all.added.extend(swap.added);
        all.removed.extend(swap.removed);
        all.reweighted.extend(swap.reweighted);
    }
    all
}

/// A [`tower::discover::Change`] keyed by upstream name, as the core's [`Change`].
pub fn from_tower(change: tower::discover::Change<String, Entry>) -> Change {
    match change {
        tower::discover::Change::Insert(_, entry) => Change::Insert(entry),
        tower::discover::Change::Remove(name) => Change::Remove(name),
    }
}
