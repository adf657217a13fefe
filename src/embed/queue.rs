//! The batching queue: pure state, no threads, no clocks. Workers call `next_batch`; callers
//! `push`. Batches are bounded by item count and by padded tokens (items × longest), and are
//! built around the oldest entry from entries of similar length, so padding stays small and
//! no entry starves.
use std::collections::VecDeque;

/// An entry waiting in the queue.
pub trait Pending {
    /// Number of tokens of this sequence (after truncation).
    fn tokens(&self) -> usize;
    /// True when nobody waits for the result any more.
    fn is_cancelled(&self) -> bool;
}

/// Bounds on one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_items: usize,
    /// Bound on `items × longest sequence`, i.e. the tokens the model actually computes.
    pub max_tokens: usize,
}

/// Returned by `push` when the queue holds `capacity` entries already.
#[derive(Debug)]
pub struct Full<T> {
    pub capacity: usize,
    pub item: T,
}

/// A bounded FIFO that forms length-bucketed batches.
#[derive(Debug)]
pub struct BatchQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T: Pending> BatchQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds an entry, or hands it back at once when the queue is full.
    pub fn push(&mut self, item: T) -> Result<(), Full<T>> {
        if self.items.len() >= self.capacity {
            self.drop_cancelled();
        }
        if self.items.len() >= self.capacity {
            return Err(Full {
                capacity: self.capacity,
                item,
            });
        }
        self.items.push_back(item);
        Ok(())
    }

    /// Takes every entry out.
    pub fn drain(&mut self) -> Vec<T> {
        self.items.drain(..).collect()
    }

    /// Removes entries whose caller has gone; returns how many.
    pub fn drop_cancelled(&mut self) -> usize {
        let before = self.items.len();
        self.items.retain(|e| !e.is_cancelled());
        before - self.items.len()
    }

    /// Takes the next batch: the oldest live entry plus the entries closest to it in length,
    /// while the batch stays within `limits`. The oldest entry is always taken, even if it
    /// alone exceeds `max_tokens`, so an over-long entry cannot block the queue.
    pub fn next_batch(&mut self, limits: BatchLimits) -> Vec<T> {
        self.drop_cancelled();
        let Some(anchor) = self.items.front() else {
            return Vec::new();
        };
        let anchor_len = anchor.tokens();
        let mut order: Vec<usize> = (1..self.items.len()).collect();
        // Stable sort: among equal distances the older entry wins.
        order.sort_by_key(|&i| self.items[i].tokens().abs_diff(anchor_len));
        let mut chosen = vec![0usize];
        let mut longest = anchor_len;
        for i in order {
            if chosen.len() >= limits.max_items {
                break;
            }
            let len = self.items[i].tokens();
            let new_longest = longest.max(len);
            if new_longest * (chosen.len() + 1) > limits.max_tokens {
                continue;
            }
            longest = new_longest;
            chosen.push(i);
        }
        chosen.sort_unstable();
        let mut batch = Vec::with_capacity(chosen.len());
        // Remove from the back so earlier indices stay valid.
        for &i in chosen.iter().rev() {
            if let Some(item) = self.items.remove(i) {
                batch.push(item);
            }
        }
        batch.reverse();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    struct E {
        id: usize,
        len: usize,
        gone: Arc<AtomicBool>,
    }

    impl Pending for E {
        fn tokens(&self) -> usize {
            self.len
        }
        fn is_cancelled(&self) -> bool {
            self.gone.load(Ordering::Relaxed)
        }
    }

    fn e(id: usize, len: usize) -> E {
        E {
            id,
            len,
            gone: Arc::new(AtomicBool::new(false)),
        }
    }

    fn ids(batch: &[E]) -> Vec<usize> {
        batch.iter().map(|e| e.id).collect()
    }

    const WIDE: BatchLimits = BatchLimits {
        max_items: 64,
        max_tokens: 1 << 20,
    };

    #[test]
    fn coalesces_everything_that_fits_into_one_batch() {
        let mut q = BatchQueue::new(16);
        for i in 0..5 {
            q.push(e(i, 10)).map_err(|_| "full").unwrap();
        }
        let batch = q.next_batch(WIDE);
        assert_eq!(ids(&batch), vec![0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        assert!(q.next_batch(WIDE).is_empty());
    }

    #[test]
    fn item_bound_splits_batches_in_arrival_order() {
        let mut q = BatchQueue::new(16);
        for i in 0..5 {
            q.push(e(i, 10)).map_err(|_| "full").unwrap();
        }
        let lim = BatchLimits {
            max_items: 2,
            max_tokens: 1 << 20,
        };
        assert_eq!(ids(&q.next_batch(lim)), vec![0, 1]);
        assert_eq!(ids(&q.next_batch(lim)), vec![2, 3]);
        assert_eq!(ids(&q.next_batch(lim)), vec![4]);
    }

    #[test]
    fn token_bound_counts_padding() {
        let mut q = BatchQueue::new(16);
        q.push(e(0, 100)).map_err(|_| "full").unwrap();
        q.push(e(1, 10)).map_err(|_| "full").unwrap();
        q.push(e(2, 100)).map_err(|_| "full").unwrap();
        // 2 × 100 = 200 fits; adding the 10-token entry would still be padded to 100 → 300.
        let lim = BatchLimits {
            max_items: 8,
            max_tokens: 250,
        };
        let batch = q.next_batch(lim);
        assert_eq!(ids(&batch), vec![0, 2]);
        let total: usize = batch.len() * batch.iter().map(|e| e.len).max().unwrap_or(0);
        assert!(total <= 250);
        assert_eq!(ids(&q.next_batch(lim)), vec![1]);
    }

    #[test]
    fn oversized_entry_is_served_alone() {
        let mut q = BatchQueue::new(4);
        q.push(e(0, 500)).map_err(|_| "full").unwrap();
        q.push(e(1, 5)).map_err(|_| "full").unwrap();
        let lim = BatchLimits {
            max_items: 8,
            max_tokens: 100,
        };
        assert_eq!(ids(&q.next_batch(lim)), vec![0]);
        assert_eq!(ids(&q.next_batch(lim)), vec![1]);
    }

    #[test]
    fn buckets_by_length_around_the_oldest() {
        let mut q = BatchQueue::new(16);
        let lens = [20, 200, 22, 190, 19, 210];
        for (i, l) in lens.iter().enumerate() {
            q.push(e(i, *l)).map_err(|_| "full").unwrap();
        }
        let lim = BatchLimits {
            max_items: 3,
            max_tokens: 1 << 20,
        };
        assert_eq!(ids(&q.next_batch(lim)), vec![0, 2, 4]);
        assert_eq!(ids(&q.next_batch(lim)), vec![1, 3, 5]);
    }

    #[test]
    fn drops_entries_whose_caller_is_gone() {
        let mut q = BatchQueue::new(16);
        let a = e(0, 10);
        let gone = a.gone.clone();
        q.push(a).map_err(|_| "full").unwrap();
        q.push(e(1, 10)).map_err(|_| "full").unwrap();
        gone.store(true, Ordering::Relaxed);
        assert_eq!(ids(&q.next_batch(WIDE)), vec![1]);
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_rejects_at_once_and_hands_the_item_back() {
        let mut q = BatchQueue::new(2);
        q.push(e(0, 1)).map_err(|_| "full").unwrap();
        q.push(e(1, 1)).map_err(|_| "full").unwrap();
        let err = q.push(e(2, 1)).err().unwrap();
        assert_eq!(err.capacity, 2);
        assert_eq!(err.item.id, 2);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn full_queue_makes_room_by_dropping_cancelled_entries() {
        let mut q = BatchQueue::new(2);
        let a = e(0, 1);
        let gone = a.gone.clone();
        q.push(a).map_err(|_| "full").unwrap();
        q.push(e(1, 1)).map_err(|_| "full").unwrap();
        gone.store(true, Ordering::Relaxed);
        assert!(q.push(e(2, 1)).is_ok());
        assert_eq!(ids(&q.next_batch(WIDE)), vec![1, 2]);
    }
}
