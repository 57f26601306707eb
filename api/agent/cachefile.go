package agent

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// The cache file: magic | version | key check | nonce | AES-256-GCM box.
const (
	fileMagic   = "COFFERAC"
	fileVersion = 1
	checkSize   = 16
	nonceSize   = 12
	headerSize  = len(fileMagic) + 1 + checkSize + nonceSize

	// Labels of the keys derived from the cache key, and of the AAD.
	encLabel   = "coffer agent cache v1: encryption key"
	checkLabel = "coffer agent cache v1: key check"
	aadLabel   = "coffer agent cache v1: cache file"
)

// fileBody is the plaintext inside the box. Leases and Static came after
// the first files: a file without them holds none.
type fileBody struct {
	Written time.Time    `json:"written"`
	Entries []fileEntry  `json:"entries"`
	Leases  []fileLease  `json:"leases,omitempty"`
	Static  []fileStatic `json:"static_creds,omitempty"`
}

// cacheContents is what the cache file keeps: the cached KV answers, the
// database credentials the agent holds, and the static-role passwords it
// keeps for outages.
type cacheContents struct {
	Records []api.CacheRecord
	Leases  []heldRecord
	Static  []staticRecord
}

// fileLease is one heldRecord; Creds is the protobuf DatabaseCreds.
type fileLease struct {
	TokenHash string    `json:"token_hash"`
	Role      string    `json:"role"`
	Creds     []byte    `json:"creds"`
	Anchor    time.Time `json:"anchor"`
	Fetched   time.Time `json:"fetched"`
	Expire    time.Time `json:"expire"`
	MaxExpire time.Time `json:"max_expire"`
	Renewable bool      `json:"renewable,omitempty"`
	AtMax     bool      `json:"at_max,omitempty"`
}

// fileStatic is one staticRecord; Creds is the protobuf
// DatabaseStaticCreds.
type fileStatic struct {
	TokenHash string    `json:"token_hash"`
	Name      string    `json:"name"`
	Creds     []byte    `json:"creds"`
	Fetched   time.Time `json:"fetched"`
	Until     time.Time `json:"until"`
}

// fileEntry is one api.CacheRecord; Response is the protobuf GetResponse.
type fileEntry struct {
	TokenHash string    `json:"token_hash"`
	Path      string    `json:"path"`
	Version   uint64    `json:"version,omitempty"`
	Index     uint64    `json:"index"`
	Fetched   time.Time `json:"fetched"`
	Expires   time.Time `json:"expires"`
	Response  []byte    `json:"response"`
}

// fileKeys are the keys derived from a cache key.
type fileKeys struct {
	aead  cipher.AEAD
	check []byte
}

// deriveKeys derives the encryption key and the key check from key.
func deriveKeys(key []byte) (*fileKeys, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: got %d bytes", ErrBadCacheKey, len(key))
	}
	enc, err := hkdf.Key(sha256.New, key, nil, encLabel, KeySize)
	if err != nil {
		return nil, err
	}
	check, err := hkdf.Key(sha256.New, key, nil, checkLabel, checkSize)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(enc)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &fileKeys{aead: aead, check: check}, nil
}

// aad binds the purpose label and the header.
func aad(header []byte) []byte {
	return append([]byte(aadLabel), header...)
}

// encodeCacheFile seals c into the cache file's bytes.
func encodeCacheFile(keys *fileKeys, c cacheContents, now time.Time) ([]byte, error) {
	body := fileBody{Written: now.UTC(), Entries: make([]fileEntry, 0, len(c.Records))}
	for _, r := range c.Records {
		resp, err := proto.Marshal(r.Response)
		if err != nil {
			return nil, fmt.Errorf("agent: encoding a cache entry: %w", err)
		}
		body.Entries = append(body.Entries, fileEntry{
			TokenHash: r.Key.TokenHash, Path: r.Key.Path, Version: r.Key.Version,
			Index: r.Index, Fetched: r.Fetched, Expires: r.Expires, Response: resp,
		})
	}
	for _, l := range c.Leases {
		cr, err := proto.Marshal(l.Creds)
		if err != nil {
			return nil, fmt.Errorf("agent: encoding held credentials: %w", err)
		}
		body.Leases = append(body.Leases, fileLease{
			TokenHash: l.Key.tokenHash, Role: l.Key.role, Creds: cr,
			Anchor: l.Anchor, Fetched: l.Fetched, Expire: l.Expire, MaxExpire: l.MaxExpire,
			Renewable: l.Renewable, AtMax: l.AtMax,
		})
	}
	for _, r := range c.Static {
		cr, err := proto.Marshal(r.Creds)
		if err != nil {
			return nil, fmt.Errorf("agent: encoding a static password: %w", err)
		}
		body.Static = append(body.Static, fileStatic{TokenHash: r.Key.tokenHash, Name: r.Key.role, Creds: cr, Fetched: r.Fetched, Until: r.Until})
	}
	plain, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("agent: encoding the cache: %w", err)
	}
	header := make([]byte, 0, headerSize)
	header = append(header, fileMagic...)
	header = append(header, fileVersion)
	header = append(header, keys.check...)
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	header = append(header, nonce...)
	out := keys.aead.Seal(header, nonce, plain, aad(header))
	clear(plain)
	return out, nil
}

// decodeCacheFile opens the cache file's bytes. It fails with
// ErrWrongCacheKey when the file was written with another key, and with
// ErrCorruptCacheFile when it does not decode.
func decodeCacheFile(keys *fileKeys, b []byte) (cacheContents, time.Time, error) {
	var none cacheContents
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorruptCacheFile, fmt.Sprintf(format, args...))
	}
	if len(b) < headerSize+keys.aead.Overhead() {
		return none, time.Time{}, corrupt("%d bytes, shorter than a header", len(b))
	}
	if string(b[:len(fileMagic)]) != fileMagic {
		return none, time.Time{}, corrupt("not a coffer agent cache file")
	}
	if v := b[len(fileMagic)]; v != fileVersion {
		return none, time.Time{}, corrupt("version %d, this agent reads version %d", v, fileVersion)
	}
	check := b[len(fileMagic)+1 : len(fileMagic)+1+checkSize]
	if subtle.ConstantTimeCompare(check, keys.check) != 1 {
		return none, time.Time{}, ErrWrongCacheKey
	}
	header := b[:headerSize]
	nonce := header[headerSize-nonceSize:]
	plain, err := keys.aead.Open(nil, nonce, b[headerSize:], aad(header))
	if err != nil {
		return none, time.Time{}, corrupt("authentication failed (the file was altered or truncated)")
	}
	defer clear(plain)
	var body fileBody
	if err := json.Unmarshal(plain, &body); err != nil {
		return none, time.Time{}, corrupt("%v", err)
	}
	recs := make([]api.CacheRecord, 0, len(body.Entries))
	for i, e := range body.Entries {
		if !validTokenHash(e.TokenHash) {
			return none, time.Time{}, corrupt("entry %d: bad token hash", i)
		}
		if e.Path == "" {
			return none, time.Time{}, corrupt("entry %d: no path", i)
		}
		resp := new(pb.GetResponse)
		if err := proto.Unmarshal(e.Response, resp); err != nil {
			return none, time.Time{}, corrupt("entry %d: %v", i, err)
		}
		recs = append(recs, api.CacheRecord{
			Key:      api.CacheKey{TokenHash: e.TokenHash, Path: e.Path, Version: e.Version},
			Response: resp, Index: e.Index, Fetched: e.Fetched, Expires: e.Expires,
		})
	}
	c := cacheContents{Records: recs}
	for i, e := range body.Leases {
		cr := new(pb.DatabaseCreds)
		switch {
		case !validTokenHash(e.TokenHash):
			return none, time.Time{}, corrupt("held credentials %d: bad token hash", i)
		case e.Role == "":
			return none, time.Time{}, corrupt("held credentials %d: no role", i)
		case proto.Unmarshal(e.Creds, cr) != nil || cr.GetLeaseId() == "":
			return none, time.Time{}, corrupt("held credentials %d: bad credentials", i)
		}
		c.Leases = append(c.Leases, heldRecord{
			Key: credsKey{tokenHash: e.TokenHash, role: e.Role}, Creds: cr,
			Anchor: e.Anchor, Fetched: e.Fetched, Expire: e.Expire, MaxExpire: e.MaxExpire,
			Renewable: e.Renewable, AtMax: e.AtMax,
		})
	}
	for i, e := range body.Static {
		cr := new(pb.DatabaseStaticCreds)
		switch {
		case !validTokenHash(e.TokenHash):
			return none, time.Time{}, corrupt("static password %d: bad token hash", i)
		case e.Name == "":
			return none, time.Time{}, corrupt("static password %d: no name", i)
		case proto.Unmarshal(e.Creds, cr) != nil:
			return none, time.Time{}, corrupt("static password %d: bad answer", i)
		}
		c.Static = append(c.Static, staticRecord{Key: credsKey{tokenHash: e.TokenHash, role: e.Name}, Creds: cr, Fetched: e.Fetched, Until: e.Until})
	}
	return c, body.Written, nil
}

// validTokenHash reports whether h is a token hash (hex SHA-256).
func validTokenHash(h string) bool {
	_, err := hex.DecodeString(h)
	return err == nil && len(h) == 2*sha256.Size
}

// cacheFile is the cache file of one cache directory.
type cacheFile struct {
	dir    string
	keys   *fileKeys
	source string // where the key came from, for messages
}

// path is the file's full name.
func (f *cacheFile) path() string { return filepath.Join(f.dir, CacheFileName) }

// prepare creates the directory (0700), narrows its mode to 0700 when it
// is wider, and removes temporary files a crash left behind. It reports
// what it changed, for the log.
func (f *cacheFile) prepare() (notes []string, err error) {
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: creating -cache-dir: %w", err)
	}
	info, err := os.Stat(f.dir)
	if err != nil {
		return nil, fmt.Errorf("agent: -cache-dir: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("agent: -cache-dir %s is not a directory", f.dir)
	}
	if info.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(f.dir, 0o700); err != nil {
			return nil, fmt.Errorf("agent: -cache-dir %s is accessible to others (%s) and cannot be narrowed to 0700: %w", f.dir, info.Mode().Perm(), err)
		}
		notes = append(notes, fmt.Sprintf("narrowed the mode of %s from %s to 0700", f.dir, info.Mode().Perm()))
	}
	leftovers, _ := filepath.Glob(filepath.Join(f.dir, "."+CacheFileName+".*.tmp"))
	for _, l := range leftovers {
		if os.Remove(l) == nil {
			notes = append(notes, "removed the leftover temporary file "+l)
		}
	}
	return notes, nil
}

// load reads the file. A missing file is an empty cache.
func (f *cacheFile) load() (cacheContents, time.Time, error) {
	b, err := os.ReadFile(f.path())
	if errors.Is(err, fs.ErrNotExist) {
		return cacheContents{}, time.Time{}, nil
	}
	if err != nil {
		return cacheContents{}, time.Time{}, fmt.Errorf("agent: reading the cache file: %w", err)
	}
	c, written, err := decodeCacheFile(f.keys, b)
	if errors.Is(err, ErrWrongCacheKey) {
		return cacheContents{}, time.Time{}, fmt.Errorf("%w: %s was not written with the key from %s: give the key it was written with, or remove the file to start with an empty cache",
			ErrWrongCacheKey, f.path(), f.source)
	}
	return c, written, err
}

// save writes c atomically: a temporary file (mode 0600) in the same
// directory, fsync, rename over the file, fsync of the directory.
func (f *cacheFile) save(c cacheContents, now time.Time) error {
	b, err := encodeCacheFile(f.keys, c, now)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(f.dir, "."+CacheFileName+".*.tmp")
	if err != nil {
		return fmt.Errorf("agent: writing the cache file: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("agent: writing the cache file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("agent: writing the cache file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("agent: writing the cache file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("agent: writing the cache file: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path()); err != nil {
		os.Remove(tmp.Name())
		done = true
		return fmt.Errorf("agent: writing the cache file: %w", err)
	}
	done = true
	if d, err := os.Open(f.dir); err == nil {
		d.Sync() // best effort: the rename is durable once the directory is
		d.Close()
	}
	return nil
}
