//! A slab: values in slots whose indices are mio tokens, so that an event
//! finds its connection or session without a lookup or an allocation.

/// Free slots are reused; keys stay valid until [`Slab::release`].
pub(super) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab::new()
    }
}

impl<T> Slab<T> {
    pub(super) fn new() -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Values in the slab (taken ones included until released).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(k) => {
                self.slots[k] = Some(value);
                k
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    /// Inserts what `make` builds knowing its key (for a token registered
    /// before the value exists); nothing is inserted when it fails.
    pub(super) fn insert_with<E>(
        &mut self,
        make: impl FnOnce(usize) -> Result<T, E>,
    ) -> Result<usize, E> {
        let key = self.free.last().copied().unwrap_or(self.slots.len());
        let value = make(key)?;
        let inserted = self.insert(value);
        debug_assert_eq!(inserted, key);
        Ok(inserted)
    }

    pub(super) fn get(&self, key: usize) -> Option<&T> {
        self.slots.get(key).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    /// Takes a value out to work on it; put it back or release its key.
    pub(super) fn take(&mut self, key: usize) -> Option<T> {
        self.slots.get_mut(key).and_then(Option::take)
    }

    pub(super) fn put_back(&mut self, key: usize, value: T) {
        self.slots[key] = Some(value);
    }

    /// Frees a slot emptied by `take`.
    pub(super) fn release(&mut self, key: usize) {
        self.len -= 1;
        self.free.push(key);
    }

    /// Takes a value out and frees its slot.
    pub(super) fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.take(key)?;
        self.release(key);
        Some(value)
    }

    /// The keys in use now.
    pub(super) fn keys(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&k| self.slots[k].is_some())
            .collect()
    }

    /// Every value with its key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
    }

    /// Every value with its key, to change.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(k, v)| Some((k, v.as_mut()?)))
    }
}
