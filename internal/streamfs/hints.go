package streamfs

import (
	"strings"

	"golang.org/x/sys/unix"
)

// MaxHintBytes bounds how much of one hinted file (Options.Hints) is
// fetched as the mount starts: the head of a big program is what starting
// it reads first.
const MaxHintBytes = 8 << 20

// maxLinks bounds the symlinks followed resolving one path, as the
// kernel's ELOOP limit does.
const maxLinks = 40

// lookup resolves p (absolute, or relative to the root) in the tree rooted
// at root, following symlinks at every step, relative ones from the
// directory holding them and absolute ones from root; ".." stops at the
// root. It returns nil when p does not name anything or loops.
func lookup(root *node, p string) *node {
	links := 0
	// walk resolves p from the directories in dirs (root first, the
	// current one last) and returns them with p's node last.
	var walk func(dirs []*node, p string) []*node
	walk = func(dirs []*node, p string) []*node {
		if strings.HasPrefix(p, "/") {
			dirs = []*node{root}
		}
		for _, name := range strings.Split(p, "/") {
			switch name {
			case "", ".":
				continue
			case "..":
				if len(dirs) > 1 {
					dirs = dirs[:len(dirs)-1]
				}
				continue
			}
			next := dirs[len(dirs)-1].children[name] // nil below a file
			if next == nil {
				return nil
			}
			if next.typ != unix.S_IFLNK {
				dirs = append(dirs, next)
				continue
			}
			if links++; links > maxLinks {
				return nil
			}
			if dirs = walk(dirs, next.link); dirs == nil {
				return nil
			}
		}
		return dirs
	}
	dirs := walk([]*node{root}, p)
	if dirs == nil {
		return nil
	}
	return dirs[len(dirs)-1]
}

// hintLists returns the spans of the regular files Options.Hints name, up
// to MaxHintBytes of each, that the cache lacks: one list per layer, each
// file's spans in order and the files' first spans ahead of the rest.
// Files already in the layer store are left out.
func (m *MountPoint) hintLists() []profileList {
	if len(m.opts.Hints) == 0 {
		return nil
	}
	perLayer := make([][][]profileJob, len(m.spans)) // per layer, per file
	seen := map[profileJob]bool{}
	for _, h := range m.opts.Hints {
		n := lookup(m.nodes[0], h)
		if n == nil || n.typ != unix.S_IFREG || n.size == 0 || n.local.Load() != nil {
			continue
		}
		if m.background != nil && m.background.layers[n.layer].getState() == LayerComplete {
			continue
		}
		spans := m.spans[n.layer]
		end := n.off + min(n.size, MaxHintBytes)
		var js []profileJob
		for s := spanAt(spans, n.off); s < len(spans) && spans[s].Offset < end; s++ {
			j := profileJob{n.layer, s}
			if seen[j] || m.cached(n.layer, s) {
				continue
			}
			seen[j] = true
			js = append(js, j)
		}
		if len(js) > 0 {
			perLayer[n.layer] = append(perLayer[n.layer], js)
		}
	}
	var lists []profileList
	for _, files := range perLayer {
		if len(files) > 0 {
			lists = append(lists, profileList{jobs: Interleave(files)})
		}
	}
	return lists
}
