package cache

// Delete removes the entries stored under keys that nobody has open, and
// returns the bytes it freed. An entry that is open stays (its reader, or
// a passthrough backing file, keeps using it) and goes with normal
// eviction later. Invalid or absent keys are skipped. The node uses it to
// drop a layer's spans once the layer is extracted in full, so no file
// data is kept twice.
func (c *Cache) Delete(keys ...string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var freed int64
	for _, s := range keys {
		k, err := parseKey(s)
		if err != nil {
			continue
		}
		e := c.entries[k.String()]
		if e == nil || e.pins > 0 {
			continue
		}
		freed += e.size
		c.dropLocked(e)
	}
	return freed
}
