package streamfs

// FallbackReads reports reads of whole cached files that passthrough
// should have served.
func (m *MountPoint) FallbackReads() int64 { return m.fallbackReads.Load() }
