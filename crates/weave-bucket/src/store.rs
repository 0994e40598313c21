//! Where a bucket's objects are kept: anything that can put, get and list
//! whole objects under names. [`Store`] is all the bucket format asks of
//! storage; `crate::objects` gives it over S3-compatible buckets and
//! local directories, and [`Memory`] in memory.

use crate::BucketError;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

/// Storage for a bucket's objects, by name (relative to the bucket's
/// prefix). Objects are written once and never changed.
pub trait Store: Send + Sync {
    /// The object, or None when there is none.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BucketError>;
    /// Bytes `range` of an object that is there.
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, BucketError>;
    /// Writes an object under a name nobody else writes (a random one).
    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BucketError>;
    /// Writes an object unless one is there: false when one was.
    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, BucketError>;
    /// The names of the objects under `prefix` (a name starts with it).
    fn list(&self, prefix: &str) -> Result<Vec<String>, BucketError>;
    /// [`Store::list`], with when each object was written, by the
    /// storage's clock (milliseconds since the epoch; 0 if unknown).
    fn list_modified(&self, prefix: &str) -> Result<Vec<(String, u64)>, BucketError>;
    /// Removes an object (one that is not there is no error).
    fn delete(&self, name: &str) -> Result<(), BucketError>;
}

/// A store in memory (for tests). When each object was written is
/// unknown (0) unless a test sets it in `times`.
#[derive(Default)]
pub struct Memory {
    pub objects: Mutex<BTreeMap<String, Vec<u8>>>,
    pub times: Mutex<BTreeMap<String, u64>>,
}

impl Store for Memory {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BucketError> {
        Ok(self.objects.lock().expect("memory").get(name).cloned())
    }
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, BucketError> {
        let objects = self.objects.lock().expect("memory");
        objects
            .get(name)
            .and_then(|o| o.get(range.start as usize..range.end as usize))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| BucketError::Store {
                bucket: "memory".into(),
                problem: format!("{name}: no bytes {range:?}"),
            })
    }
    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BucketError> {
        self.objects
            .lock()
            .expect("memory")
            .insert(name.to_string(), data);
        Ok(())
    }
    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, BucketError> {
        let mut o = self.objects.lock().expect("memory");
        if o.contains_key(name) {
            return Ok(false);
        }
        o.insert(name.to_string(), data);
        Ok(true)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, BucketError> {
        Ok(self
            .objects
            .lock()
            .expect("memory")
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn list_modified(&self, prefix: &str) -> Result<Vec<(String, u64)>, BucketError> {
        let times = self.times.lock().expect("memory");
        Ok(self
            .list(prefix)?
            .into_iter()
            .map(|n| {
                let t = times.get(&n).copied().unwrap_or(0);
                (n, t)
            })
            .collect())
    }
    fn delete(&self, name: &str) -> Result<(), BucketError> {
        self.objects.lock().expect("memory").remove(name);
        self.times.lock().expect("memory").remove(name);
        Ok(())
    }
}

/// A store shared (by several opens of one bucket, say).
impl<S: Store> Store for std::sync::Arc<S> {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BucketError> {
        (**self).get(name)
    }
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, BucketError> {
        (**self).get_range(name, range)
    }
    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BucketError> {
        (**self).put(name, data)
    }
    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, BucketError> {
        (**self).put_new(name, data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, BucketError> {
        (**self).list(prefix)
    }
    fn list_modified(&self, prefix: &str) -> Result<Vec<(String, u64)>, BucketError> {
        (**self).list_modified(prefix)
    }
    fn delete(&self, name: &str) -> Result<(), BucketError> {
        (**self).delete(name)
    }
}
