package fsm

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// Version is one stored version of a secret. Deleted and destroyed versions
// are returned with their flags set; the caller decides what to show.
type Version struct {
	// Version is the version number, starting at 1.
	Version uint64
	// Ciphertext is the encrypted value; nil when destroyed. It is a copy
	// owned by the caller.
	Ciphertext []byte
	// CreatedTime is the leader time of the write.
	CreatedTime time.Time
	// DeletedTime is the leader time of the soft delete; zero when not deleted.
	DeletedTime time.Time
	// Destroyed is true when the ciphertext was destroyed.
	Destroyed bool
	// CustomMetadata is the secret's custom metadata (nil when none).
	CustomMetadata map[string]string
}

// Deleted reports whether the version counts as deleted at now: soft
// deleted, or past the deletion time delete_version_after gave it.
func (v *Version) Deleted(now time.Time) bool {
	return !v.DeletedTime.IsZero() && !v.DeletedTime.After(now)
}

// VersionMeta is the metadata of one retained version.
type VersionMeta struct {
	// Version is the version number.
	Version uint64
	// CreatedTime is the leader time of the write.
	CreatedTime time.Time
	// DeletedTime is the leader time of the soft delete; zero when not deleted.
	DeletedTime time.Time
	// Destroyed is true when the ciphertext was destroyed.
	Destroyed bool
}

// Metadata is the non-secret metadata of a secret.
type Metadata struct {
	// Path is the secret's path.
	Path string
	// CurrentVersion is the latest version written; 0 when none was.
	CurrentVersion uint64
	// OldestVersion is the oldest retained version; 0 when none is retained.
	OldestVersion uint64
	// MaxVersions is how many versions are retained.
	MaxVersions uint32
	// CASRequired is true when every write must carry a check-and-set version.
	CASRequired bool
	// CreatedTime is the leader time the secret was created.
	CreatedTime time.Time
	// UpdatedTime is the leader time of the last change.
	UpdatedTime time.Time
	// Versions lists the retained versions, ascending.
	Versions []VersionMeta
	// CustomMetadata is the user's own key/value pairs (nil when none).
	CustomMetadata map[string]string
	// DeleteVersionAfter is how long after its creation a new version
	// counts as deleted; 0 means never.
	DeleteVersionAfter time.Duration
}

// view runs fn in a read transaction of the current database.
func (f *FSM) view(fn func(*bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return ErrClosed
	}
	return f.db.View(fn)
}

// Get returns version of the secret at path; version 0 means the current
// version. It returns an error wrapping ErrNotFound when the secret or the
// version does not exist, including versions removed by max_versions.
func (f *FSM) Get(path string, version uint64) (*Version, error) {
	var out *Version
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		var valueIndex uint64
		if out, valueIndex, err = versionOf(tx, path, version); err != nil {
			return err
		}
		if !out.Destroyed {
			b, key := valueKeyOf(tx, path, out.Version, valueIndex)
			data := b.Get(key)
			if data == nil {
				return fmt.Errorf("fsm: state inconsistent: %q version %d has metadata but no value", path, out.Version)
			}
			out.Ciphertext = bytes.Clone(data)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// VersionInfo is Get without the ciphertext: a version's times and state
// and the secret's custom metadata (a put's answer reads them back).
func (f *FSM) VersionInfo(path string, version uint64) (*Version, error) {
	var out *Version
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		out, _, err = versionOf(tx, path, version)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// versionOf reads version (0: the current one) of the secret at path from
// its metadata, without its value, and where its value is (valueKeyOf).
func versionOf(tx *bolt.Tx, path string, version uint64) (*Version, uint64, error) {
	raw := tx.Bucket(bucketSecretMeta).Get([]byte(path))
	if raw == nil {
		return nil, 0, fmt.Errorf("%w (no secret at %q)", ErrNotFound, path)
	}
	vm, found, err := lookupVersion(raw, version)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: metadata of %q: %v", ErrCorrupt, path, err)
	}
	if !found {
		if version == 0 {
			return nil, 0, fmt.Errorf("%w (%q has no current version)", ErrNotFound, path)
		}
		return nil, 0, fmt.Errorf("%w (%q has no version %d)", ErrNotFound, path, version)
	}
	out := &Version{
		Version:     vm.version,
		CreatedTime: unixTime(vm.created),
		DeletedTime: unixTime(vm.deleted),
		Destroyed:   vm.destroyed,
	}
	if out.CustomMetadata, err = customMetadata(raw); err != nil {
		return nil, 0, fmt.Errorf("%w: metadata of %q: %v", ErrCorrupt, path, err)
	}
	return out, vm.valueIndex, nil
}

// CurrentVersion returns the current version of the secret at path (0
// when it has none, or does not exist), reading only that field of its
// metadata: the leader asks it for every put.
func (f *FSM) CurrentVersion(path string) (uint64, error) {
	var v uint64
	err := f.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketSecretMeta).Get([]byte(path))
		if raw == nil {
			return nil
		}
		var err error
		if v, err = currentVersion(raw); err != nil {
			return fmt.Errorf("%w: metadata of %q: %v", ErrCorrupt, path, err)
		}
		return nil
	})
	return v, err
}

// Metadata returns the metadata of the secret at path, or an error wrapping
// ErrNotFound.
func (f *FSM) Metadata(path string) (*Metadata, error) {
	var meta *fsmpb.SecretMeta
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		meta, err = loadMeta(tx.Bucket(bucketSecretMeta), path)
		return err
	})
	if err != nil {
		return nil, err
	}
	if meta == nil {
		return nil, fmt.Errorf("%w (no secret at %q)", ErrNotFound, path)
	}
	out := &Metadata{
		Path:               path,
		CurrentVersion:     meta.GetCurrentVersion(),
		OldestVersion:      meta.GetOldestVersion(),
		MaxVersions:        meta.GetMaxVersions(),
		CASRequired:        meta.GetCasRequired(),
		CreatedTime:        unixTime(meta.GetCreatedUnixNano()),
		UpdatedTime:        unixTime(meta.GetUpdatedUnixNano()),
		Versions:           make([]VersionMeta, 0, len(meta.GetVersions())),
		CustomMetadata:     meta.GetCustomMetadata(),
		DeleteVersionAfter: time.Duration(meta.GetDeleteVersionAfterNanos()),
	}
	for _, vm := range meta.GetVersions() {
		out.Versions = append(out.Versions, VersionMeta{
			Version:     vm.GetVersion(),
			CreatedTime: unixTime(vm.GetCreatedUnixNano()),
			DeletedTime: unixTime(vm.GetDeletedUnixNano()),
			Destroyed:   vm.GetDestroyed(),
		})
	}
	return out, nil
}

// List returns the immediate children of prefix, Vault style: secrets as
// their last segment ("a") and deeper paths as their next segment with a
// trailing slash ("dir/"), sorted and without duplicates. A non-empty prefix
// without a trailing slash gets one ("secret" lists "secret/"). An empty
// result is not an error.
func (f *FSM) List(prefix string) ([]string, error) {
	keys, _, err := f.ListPage(prefix, "", 0)
	return keys, err
}

// ListPage is List from the child after `after` (exclusive; "" from the
// start), at most limit children (0: all). more reports that children
// follow the last one returned.
func (f *FSM) ListPage(prefix, after string, limit int) (keys []string, more bool, err error) {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	p := []byte(prefix)
	var out []string
	err = f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSecretMeta).Cursor()
		k, _ := c.Seek(p)
		if after != "" {
			// Past the child "after": a directory child "dir/" skips its
			// whole subtree ("dir0" sorts right after every "dir/..."), a
			// secret child "x" only its own key.
			a := []byte(prefix + after)
			if strings.HasSuffix(after, "/") {
				a[len(a)-1] = '/' + 1
				k, _ = c.Seek(a)
			} else if k, _ = c.Seek(a); k != nil && bytes.Equal(k, a) {
				k, _ = c.Next()
			}
		}
		for k != nil && bytes.HasPrefix(k, p) {
			if limit > 0 && len(out) == limit {
				more = true
				return nil
			}
			rest := k[len(p):]
			i := bytes.IndexByte(rest, '/')
			if i < 0 {
				out = append(out, string(rest))
				k, _ = c.Next()
				continue
			}
			out = append(out, string(rest[:i+1]))
			// Skip every key under this child: "dir0" sorts right after
			// all of "dir/...", as '0' follows '/'.
			next := make([]byte, 0, len(p)+i+1)
			next = append(append(append(next, p...), rest[:i]...), '/'+1)
			k, _ = c.Seek(next)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, more, nil
}

// SysGeneration changes after every committed change to the system keys
// (and after a snapshot is installed). A cache of system keys stays valid
// while it is unchanged: read the generation before reading the key, and
// drop what was cached under another generation.
func (f *FSM) SysGeneration() uint64 { return f.sysGen.Load() }

// SysGet returns a copy of the system value at key, or an error wrapping
// ErrNotFound.
func (f *FSM) SysGet(key string) ([]byte, error) {
	var out []byte
	err := f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketSys).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("%w (no system key %q)", ErrNotFound, key)
		}
		out = bytes.Clone(v)
		if out == nil {
			out = []byte{}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SysList returns the system keys that start with prefix, in full, sorted.
func (f *FSM) SysList(prefix string) ([]string, error) {
	p := []byte(prefix)
	var out []string
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSys).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			out = append(out, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SysCount returns how many system keys start with prefix, without
// copying them.
func (f *FSM) SysCount(prefix string) (int, error) {
	p := []byte(prefix)
	n := 0
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSys).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// DBStats are the state machine database's page counts, for the node's
// metrics.
type DBStats struct {
	// FreePages are pages bbolt can reuse; PendingPages are freed pages an
	// open read transaction still holds.
	FreePages, PendingPages int
	// FreeBytes is the size of the free and pending pages.
	FreeBytes int
}

// DBStats returns the database's free page counts.
func (f *FSM) DBStats() DBStats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return DBStats{}
	}
	st := f.db.Stats()
	return DBStats{FreePages: st.FreePageN, PendingPages: st.PendingPageN, FreeBytes: st.FreeAlloc}
}

// KVConfig is a KV mount's configuration: the defaults of its secrets.
type KVConfig struct {
	// MaxVersions is the versions a secret without its own max_versions
	// keeps (0: DefaultMaxVersions).
	MaxVersions uint32
	// CASRequired makes every write to the mount carry a check-and-set.
	CASRequired bool
	// DeleteVersionAfter deletes each new version this long after its
	// creation (0: never; a secret's own shorter setting wins).
	DeleteVersionAfter time.Duration
}

// KVConfig returns the configuration of mount ("secret/"); the zero
// configuration when it has none.
func (f *FSM) KVConfig(mount string) (*KVConfig, error) {
	var cfg *fsmpb.KVConfig
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		cfg, err = loadKVConfig(tx.Bucket(bucketMeta), mount)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &KVConfig{
		MaxVersions:        cfg.GetMaxVersions(),
		CASRequired:        cfg.GetCasRequired(),
		DeleteVersionAfter: time.Duration(cfg.GetDeleteVersionAfterNanos()),
	}, nil
}

// unixTime converts stored leader time; 0 is the zero time.
func unixTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
