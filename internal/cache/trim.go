package cache

// Trim evicts least recently used entries that no reader has open until
// the cache holds at most target bytes (0 empties it of everything not in
// use), and returns how many entries and bytes it evicted. Open entries
// stay, as for MaxBytes; every entry can be fetched again, so Trim is
// safe while mounts read.
func (c *Cache) Trim(target int64) (entries, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, 0
	}
	for el := c.lru.Back(); el != nil && c.bytes > target; {
		e := el.Value.(*entry)
		el = el.Prev()
		if e.pins > 0 {
			continue
		}
		c.dropLocked(e)
		c.stats.Evictions++
		c.stats.EvictedBytes += e.size
		entries++
		bytes += e.size
	}
	return entries, bytes
}
