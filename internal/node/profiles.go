package node

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/indexsvc"
)

// profileFresh is how long the node uses its own copy of a layer's
// startup profile (the one it last fetched, or recorded itself) before
// asking the profile source again. Within it, a warm start asks for
// nothing but the manifest; past it, what other nodes' runs added to the
// profile reaches this node.
const profileFresh = 10 * time.Minute

// maxLocalProfile bounds the file read for one local profile: a JSON
// list of MaxProfileSpans span numbers of up to 7 digits.
const maxLocalProfile = 64 + indexsvc.MaxProfileSpans*8

// localProfile returns the node's copy of layer d's startup profile (nil
// spans when the layer had none) if it is younger than profileFresh.
func (n *Node) localProfile(d digest.Digest) (spans []int, ok bool) {
	p, err := n.localProfilePath(d)
	if err != nil {
		return nil, false
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || time.Since(fi.ModTime()) >= profileFresh || fi.ModTime().After(time.Now()) {
		return nil, false
	}
	var lp indexsvc.LayerProfile
	if err := json.NewDecoder(io.LimitReader(f, maxLocalProfile)).Decode(&lp); err != nil || len(lp.Spans) > indexsvc.MaxProfileSpans {
		return nil, false
	}
	for _, s := range lp.Spans {
		if s < 0 {
			return nil, false
		}
	}
	return lp.Spans, true
}

// keepProfile stores spans (nil: the layer has no profile) as the node's
// copy of layer d's startup profile.
func (n *Node) keepProfile(d digest.Digest, spans []int) {
	if len(spans) > indexsvc.MaxProfileSpans {
		spans = spans[:indexsvc.MaxProfileSpans]
	}
	p, err := n.localProfilePath(d)
	if err != nil {
		return
	}
	if err := writeFileAtomic(p, indexsvc.LayerProfile{Spans: spans}); err != nil {
		n.log.Debug("node: keeping a startup profile failed", "layer", d, "err", err)
	}
}

// localProfilePath is where the node keeps its copy of layer d's profile:
// Layout.Profiles()/<algorithm>/<hex>.json.
func (n *Node) localProfilePath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", err
	}
	return filepath.Join(n.opts.Layout.Profiles(), string(d.Algorithm()), d.Encoded()+".json"), nil
}

// writeFileAtomic writes v as JSON to path through a temporary file in
// its directory, so a reader sees the old file or the new one.
func writeFileAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return errors.Join(err, os.Remove(f.Name()))
	}
	return nil
}
