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

// fileBody is the plaintext inside the box.
type fileBody struct {
	Written time.Time   `json:"written"`
	Entries []fileEntry `json:"entries"`
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

// encodeCacheFile seals recs into the cache file's bytes.
func encodeCacheFile(keys *fileKeys, recs []api.CacheRecord, now time.Time) ([]byte, error) {
	body := fileBody{Written: now.UTC(), Entries: make([]fileEntry, 0, len(recs))}
	for _, r := range recs {
		resp, err := proto.Marshal(r.Response)
		if err != nil {
			return nil, fmt.Errorf("agent: encoding a cache entry: %w", err)
		}
		body.Entries = append(body.Entries, fileEntry{
			TokenHash: r.Key.TokenHash, Path: r.Key.Path, Version: r.Key.Version,
			Index: r.Index, Fetched: r.Fetched, Expires: r.Expires, Response: resp,
		})
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
func decodeCacheFile(keys *fileKeys, b []byte) ([]api.CacheRecord, time.Time, error) {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorruptCacheFile, fmt.Sprintf(format, args...))
	}
	if len(b) < headerSize+keys.aead.Overhead() {
		return nil, time.Time{}, corrupt("%d bytes, shorter than a header", len(b))
	}
	if string(b[:len(fileMagic)]) != fileMagic {
		return nil, time.Time{}, corrupt("not a coffer agent cache file")
	}
	if v := b[len(fileMagic)]; v != fileVersion {
		return nil, time.Time{}, corrupt("version %d, this agent reads version %d", v, fileVersion)
	}
	check := b[len(fileMagic)+1 : len(fileMagic)+1+checkSize]
	if subtle.ConstantTimeCompare(check, keys.check) != 1 {
		return nil, time.Time{}, ErrWrongCacheKey
	}
	header := b[:headerSize]
	nonce := header[headerSize-nonceSize:]
	plain, err := keys.aead.Open(nil, nonce, b[headerSize:], aad(header))
	if err != nil {
		return nil, time.Time{}, corrupt("authentication failed (the file was altered or truncated)")
	}
	defer clear(plain)
	var body fileBody
	if err := json.Unmarshal(plain, &body); err != nil {
		return nil, time.Time{}, corrupt("%v", err)
	}
	recs := make([]api.CacheRecord, 0, len(body.Entries))
	for i, e := range body.Entries {
		if _, err := hex.DecodeString(e.TokenHash); err != nil || len(e.TokenHash) != 2*sha256.Size {
			return nil, time.Time{}, corrupt("entry %d: bad token hash", i)
		}
		if e.Path == "" {
			return nil, time.Time{}, corrupt("entry %d: no path", i)
		}
		resp := new(pb.GetResponse)
		if err := proto.Unmarshal(e.Response, resp); err != nil {
			return nil, time.Time{}, corrupt("entry %d: %v", i, err)
		}
		recs = append(recs, api.CacheRecord{
			Key:      api.CacheKey{TokenHash: e.TokenHash, Path: e.Path, Version: e.Version},
			Response: resp, Index: e.Index, Fetched: e.Fetched, Expires: e.Expires,
		})
	}
	return recs, body.Written, nil
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
func (f *cacheFile) load() ([]api.CacheRecord, time.Time, error) {
	b, err := os.ReadFile(f.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("agent: reading the cache file: %w", err)
	}
	recs, written, err := decodeCacheFile(f.keys, b)
	if errors.Is(err, ErrWrongCacheKey) {
		return nil, time.Time{}, fmt.Errorf("%w: %s was not written with the key from %s: give the key it was written with, or remove the file to start with an empty cache",
			ErrWrongCacheKey, f.path(), f.source)
	}
	return recs, written, err
}

// save writes recs atomically: a temporary file (mode 0600) in the same
// directory, fsync, rename over the file, fsync of the directory.
func (f *cacheFile) save(recs []api.CacheRecord, now time.Time) error {
	b, err := encodeCacheFile(f.keys, recs, now)
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
