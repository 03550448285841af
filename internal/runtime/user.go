package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// execUser is a resolved image/option user.
type execUser struct {
	UID, GID       uint32
	AdditionalGids []uint32
	Home           string
}

// openInRoot opens name inside root, resolving symlinks as if root were "/",
// so an image's /etc/passwd symlink cannot point at the host's files.
func openInRoot(root, name string) (*os.File, error) {
	dir, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	fd, err := unix.Openat2(int(dir.Fd()), strings.TrimPrefix(name, "/"), &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readColonFile reads /etc/passwd-style lines inside root; a missing file
// reads as empty, as docker treats it.
func readColonFile(root, name string) ([][]string, error) {
	f, err := openInRoot(root, name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out, sc.Err()
}

// resolveUser turns docker's user syntax (user, uid, user:group, uid:gid, in
// any mix) into numeric IDs using the image's /etc/passwd and /etc/group, the
// way docker does: a numeric uid need not exist, a name must.
func resolveUser(root, spec string) (execUser, error) {
	u := execUser{Home: "/"}
	if spec == "" {
		spec = "0"
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	passwd, err := readColonFile(root, "/etc/passwd")
	if err != nil {
		return u, fmt.Errorf("runtime: reading the image's /etc/passwd: %w", err)
	}
	groups, err := readColonFile(root, "/etc/group")
	if err != nil {
		return u, fmt.Errorf("runtime: reading the image's /etc/group: %w", err)
	}
	var userName string
	found := false
	if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		u.UID = uint32(n)
		for _, p := range passwd {
			if len(p) >= 7 && p[2] == userPart {
				userName, found = p[0], true
				g, _ := strconv.ParseUint(p[3], 10, 32)
				u.GID, u.Home = uint32(g), p[5]
				break
			}
		}
	} else {
		for _, p := range passwd {
			if len(p) >= 7 && p[0] == userPart {
				uid, err1 := strconv.ParseUint(p[2], 10, 32)
				gid, err2 := strconv.ParseUint(p[3], 10, 32)
				if err1 != nil || err2 != nil {
					continue
				}
				u.UID, u.GID, u.Home = uint32(uid), uint32(gid), p[5]
				userName, found = p[0], true
				break
			}
		}
		if !found {
			return u, fmt.Errorf("%w: user %q: no such user in the image's /etc/passwd; use a numeric uid[:gid]", ErrInvalidSpec, userPart)
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			ok := false
			for _, g := range groups {
				if len(g) >= 3 && g[0] == groupPart {
					if n, err := strconv.ParseUint(g[2], 10, 32); err == nil {
						u.GID, ok = uint32(n), true
						break
					}
				}
			}
			if !ok {
				return u, fmt.Errorf("%w: user %q: no such group %q in the image's /etc/group; use a numeric gid", ErrInvalidSpec, spec, groupPart)
			}
		}
	} else if found {
		// Supplementary groups, as docker gives them when no group is named.
		for _, g := range groups {
			if len(g) < 4 || g[3] == "" {
				continue
			}
			for _, m := range strings.Split(g[3], ",") {
				if m == userName {
					if n, err := strconv.ParseUint(g[2], 10, 32); err == nil && uint32(n) != u.GID {
						u.AdditionalGids = append(u.AdditionalGids, uint32(n))
					}
				}
			}
		}
	}
	if u.Home == "" {
		u.Home = "/"
	}
	return u, nil
}
