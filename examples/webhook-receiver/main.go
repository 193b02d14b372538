// Command webhook-receiver is a small webhook endpoint for trying
// Mailferry's webhooks by hand (README, "Try it with make run"): it
// verifies each request with the Standard Webhooks library and the secret
// in WEBHOOK_SECRET, prints the event, and answers 204 (401 for a bad
// signature, so Mailferry retries it).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "address to listen on")
	flag.Parse()
	wh, err := standardwebhooks.NewWebhook(os.Getenv("WEBHOOK_SECRET"))
	if err != nil {
		log.Fatalf("WEBHOOK_SECRET (the whsec_… the API showed): %v", err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		if err := wh.Verify(body, r.Header); err != nil {
			fmt.Printf("bad signature on %s: %v\n", r.Header.Get("webhook-id"), err)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var ev struct {
			ID   string `json:"id"`
			Type string `json:"type"`
			Data struct {
				Recipient string `json:"recipient"`
				Sequence  int    `json:"sequence"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &ev)
		fmt.Printf("signature verified: %s %s (sequence %d) id %s\n%s\n", ev.Type, ev.Data.Recipient, ev.Data.Sequence, ev.ID, body)
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("listening on http://%s/", *addr)
	log.Fatal(srv.ListenAndServe())
}
