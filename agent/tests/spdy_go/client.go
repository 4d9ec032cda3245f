// The Go side of crius's SPDY interoperability test (agent/src/streaming/spdy/go_tests.rs): a client built on
// moby/spdystream, the library kubectl, crictl and kubelet use, talks to crius's SPDY/3.1 session.
//
// It pings, opens five echo streams and one 10 MiB stream at once (headers in, data both ways, half-close
// each way), has the server reset one stream, pings again and closes. Each check prints one line; any
// failure exits 1 with the reason. Built in GOPATH mode against Debian's golang-github-docker-spdystream-dev.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/docker/spdystream"
)

const bigSize = 10 << 20

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func open(conn *spdystream.Connection, headers http.Header) (*spdystream.Stream, error) {
	stream, err := conn.CreateStream(headers, nil, false)
	if err != nil {
		return nil, fmt.Errorf("create stream: %v", err)
	}
	// The server must answer every stream with SYN_REPLY, as kubelet does.
	if err := stream.WaitTimeout(10 * time.Second); err != nil {
		return nil, fmt.Errorf("stream %d: no SYN_REPLY: %v", stream.Identifier(), err)
	}
	return stream, nil
}

// echo sends a payload, half-closes, and expects the server's header summary and the payload back.
func echo(conn *spdystream.Connection, i int) error {
	h := http.Header{}
	h.Set("streamtype", "echo")
	h.Set("x-index", strconv.Itoa(i))
	h.Add("x-multi", "a")
	h.Add("x-multi", "b")
	stream, err := open(conn, h)
	if err != nil {
		return err
	}
	payload := bytes.Repeat([]byte(fmt.Sprintf("small-%d;", i)), 100*(i+1))
	// Several writes: spdystream sends one DATA frame per Write.
	for at := 0; at < len(payload); at += 700 {
		end := at + 700
		if end > len(payload) {
			end = len(payload)
		}
		if _, err := stream.Write(payload[at:end]); err != nil {
			return fmt.Errorf("echo %d: write: %v", i, err)
		}
	}
	if err := stream.Close(); err != nil {
		return fmt.Errorf("echo %d: close: %v", i, err)
	}
	got, err := io.ReadAll(stream)
	if err != nil {
		return fmt.Errorf("echo %d: read: %v", i, err)
	}
	want := append([]byte(fmt.Sprintf("streamtype=echo x-index=%d x-multi=a,b\n", i)), payload...)
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo %d: got %d bytes %.60q, want %d bytes %.60q", i, len(got), got, len(want), want)
	}
	fmt.Printf("echo %d ok %d\n", i, len(payload))
	return nil
}

// big sends 10 MiB in 32 KiB writes while reading the echo, and compares checksums.
func big(conn *spdystream.Connection) error {
	h := http.Header{}
	h.Set("streamtype", "big")
	stream, err := open(conn, h)
	if err != nil {
		return err
	}
	payload := make([]byte, bigSize)
	rand.New(rand.NewSource(42)).Read(payload)
	sent := sha256.Sum256(payload)
	writeErr := make(chan error, 1)
	go func() {
		for at := 0; at < len(payload); at += 32 << 10 {
			if _, err := stream.Write(payload[at : at+(32<<10)]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- stream.Close()
	}()
	hash := sha256.New()
	n, err := io.Copy(hash, stream)
	if err != nil {
		return fmt.Errorf("big: read: %v", err)
	}
	if err := <-writeErr; err != nil {
		return fmt.Errorf("big: write: %v", err)
	}
	if n != bigSize || !bytes.Equal(hash.Sum(nil), sent[:]) {
		return fmt.Errorf("big: got %d bytes sha256 %x, want %d bytes sha256 %x", n, hash.Sum(nil), bigSize, sent)
	}
	fmt.Printf("big ok %d %s\n", n, hex.EncodeToString(sent[:]))
	return nil
}

// reset asks the server to reset the stream; spdystream then ends reads and marks the stream finished
// although this side never closed it.
func reset(conn *spdystream.Connection) error {
	h := http.Header{}
	h.Set("streamtype", "reset")
	stream, err := open(conn, h)
	if err != nil {
		return err
	}
	if _, err := stream.Write([]byte("please reset")); err != nil {
		return fmt.Errorf("reset: write: %v", err)
	}
	got, err := io.ReadAll(stream)
	if err != nil || len(got) != 0 {
		return fmt.Errorf("reset: read %q, %v", got, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !stream.IsFinished() {
		if time.Now().After(deadline) {
			return fmt.Errorf("reset: the stream ended without RST_STREAM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("reset ok")
	return nil
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: client HOST:PORT")
	}
	tcp, err := net.DialTimeout("tcp", os.Args[1], 10*time.Second)
	if err != nil {
		fail("dial: %v", err)
	}
	conn, err := spdystream.NewConnection(tcp, false)
	if err != nil {
		fail("spdy connection: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)

	if _, err := conn.Ping(); err != nil {
		fail("ping: %v", err)
	}
	fmt.Println("ping ok")

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := echo(conn, i); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := big(conn); err != nil {
			errs <- err
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		fail("%v", err)
	}

	if err := reset(conn); err != nil {
		fail("%v", err)
	}
	if _, err := conn.Ping(); err != nil {
		fail("second ping: %v", err)
	}
	fmt.Println("ping ok")

	// Close sends GOAWAY, then closes the connection once every stream is done both ways.
	if err := conn.Close(); err != nil {
		fail("close: %v", err)
	}
	if err := conn.Wait(10 * time.Second); err != nil {
		fail("waiting for the close: %v", err)
	}
	fmt.Println("closed")
}
