// Command example adds two documents to a DeepRecall server, streams a query with its trace,
// runs a small batch and prints the results.
//
//	go run ./example -endpoint localhost:50051
//
// The endpoint also comes from DEEPRECALL_ENDPOINT (host:port or http://host:port) and the
// API key, sent as a bearer token, from DEEPRECALL_API_KEY.
//
// An https://host:port endpoint is reached over TLS. The server's certificate is checked
// against the system's roots, or against the PEM file of a private CA named by
// DEEPRECALL_TLS_CA; DEEPRECALL_TLS_CLIENT_CERT and DEEPRECALL_TLS_CLIENT_KEY name a client
// certificate and its key (PEM files), for a server that requires one (mutual TLS).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	deeprecallv1 "github.com/deeprecall/deeprecall/clients/go/deeprecallv1"
)

func main() {
	endpoint := flag.String("endpoint", envOr("DEEPRECALL_ENDPOINT", "localhost:50051"), "server address, host:port, http://host:port or https://host:port")
	collection := flag.String("collection", "go-example", "collection to write to and query")
	timeout := flag.Duration("timeout", time.Minute, "deadline of the whole run")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if key := os.Getenv("DEEPRECALL_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	target, security, err := dialTarget(*endpoint)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.DialContext(ctx, target, security)
	if err != nil {
		log.Fatalf("connect to %s: %v", *endpoint, err)
	}
	defer conn.Close()
	client := deeprecallv1.NewDeepRecallClient(conn)

	if err := run(ctx, client, *collection); err != nil {
		log.Fatal(err)
	}
}

// dialTarget splits an endpoint into the address to dial and how to secure the connection:
// TLS for https://host:port (configured by DEEPRECALL_TLS_CA, DEEPRECALL_TLS_CLIENT_CERT and
// DEEPRECALL_TLS_CLIENT_KEY), plaintext for host:port and http://host:port.
func dialTarget(endpoint string) (string, grpc.DialOption, error) {
	caFile := os.Getenv("DEEPRECALL_TLS_CA")
	certFile := os.Getenv("DEEPRECALL_TLS_CLIENT_CERT")
	keyFile := os.Getenv("DEEPRECALL_TLS_CLIENT_KEY")
	if !strings.HasPrefix(endpoint, "https://") {
		if caFile != "" || certFile != "" || keyFile != "" {
			return "", nil, fmt.Errorf("DEEPRECALL_TLS_* is set, but the endpoint %s is not https://", endpoint)
		}
		// WithInsecure rather than credentials/insecure: the latter appeared in grpc-go 1.34
		// and this example also builds against Debian's 1.33.
		return strings.TrimPrefix(endpoint, "http://"), grpc.WithInsecure(), nil
	}
	config, err := tlsConfig(caFile, certFile, keyFile)
	if err != nil {
		return "", nil, err
	}
	// credentials.NewTLS checks the server's certificate against the host of the target.
	target := strings.TrimSuffix(strings.TrimPrefix(endpoint, "https://"), "/")
	return target, grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

// tlsConfig trusts the CA in caFile (the system's roots when empty) and presents the client
// certificate in certFile and keyFile, when given.
func tlsConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("DEEPRECALL_TLS_CA: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("DEEPRECALL_TLS_CA: no PEM certificate in %s", caFile)
		}
		config.RootCAs = roots
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("DEEPRECALL_TLS_CLIENT_CERT and DEEPRECALL_TLS_CLIENT_KEY go together: a client certificate and its key")
	}
	if certFile != "" {
		certificate, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s and key %s: %w", certFile, keyFile, err)
		}
		config.Certificates = []tls.Certificate{certificate}
	}
	return config, nil
}

func run(ctx context.Context, client deeprecallv1.DeepRecallClient, collection string) error {
	added, err := client.AddDocuments(ctx, &deeprecallv1.AddDocumentsRequest{
		Collection: collection,
		Documents: []*deeprecallv1.Document{
			document("aurora-strip", "The Aurora Strip controller board is manufactured by Kestrel Fabrication.", "product"),
			document("kestrel", "Kestrel Fabrication is headquartered in Tampere, Finland.", "supplier"),
		},
	})
	if err != nil {
		return fmt.Errorf("add documents: %w", err)
	}
	fmt.Printf("added %s; %d document(s) in %s\n", strings.Join(added.Ids, ", "), added.DocumentCount, collection)

	maxSearchCalls := uint32(6)
	result, err := query(ctx, client, &deeprecallv1.QueryRequest{
		Query:      "Which city is the maker of the Aurora Strip controller board headquartered in?",
		Collection: collection,
		Budget:     &deeprecallv1.Budget{MaxSearchCalls: &maxSearchCalls},
	})
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	fmt.Printf("answer (confidence %.2f): %s\n", result.Confidence, result.Answer)
	fmt.Printf("citations: %s\n", strings.Join(result.Citations, ", "))

	batch, err := client.QueryBatch(ctx, &deeprecallv1.QueryBatchRequest{
		Queries: []*deeprecallv1.QueryRequest{
			{Query: "Where is Kestrel Fabrication headquartered?", Collection: collection},
			{Query: "", Collection: collection},
		},
		MaxConcurrency: 2,
	})
	if err != nil {
		return fmt.Errorf("query batch: %w", err)
	}
	for {
		item, err := batch.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("query batch: %w", err)
		}
		switch outcome := item.Outcome.(type) {
		case *deeprecallv1.QueryBatchItem_Result:
			fmt.Printf("batch #%d: %s\n", item.Index, outcome.Result.Answer)
		case *deeprecallv1.QueryBatchItem_Error:
			fmt.Printf("batch #%d failed: %s: %s\n", item.Index, codes.Code(outcome.Error.Code), outcome.Error.Message)
		}
	}

	// A bad request is a gRPC status: the code says what kind of failure, the message which field.
	_, err = query(ctx, client, &deeprecallv1.QueryRequest{Query: "", Collection: collection})
	if status.Code(err) != codes.InvalidArgument {
		return fmt.Errorf("an empty query: expected InvalidArgument, got %v", err)
	}
	fmt.Printf("an empty query: %s: %s\n", status.Code(err), status.Convert(err).Message())

	stats, err := client.GetStats(ctx, &deeprecallv1.GetStatsRequest{})
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	fmt.Printf("server %s, model %s, %d queries answered\n", stats.ServerVersion, stats.Model, stats.Usage.GetQueries())
	return nil
}

// query streams one query, prints its trace as it arrives and returns the final result.
func query(ctx context.Context, client deeprecallv1.DeepRecallClient, request *deeprecallv1.QueryRequest) (*deeprecallv1.QueryResult, error) {
	stream, err := client.Query(ctx, request)
	if err != nil {
		return nil, err
	}
	var result *deeprecallv1.QueryResult
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch e := event.Event.(type) {
		case *deeprecallv1.QueryEvent_StepStarted:
			fmt.Printf("step %d\n", e.StepStarted.Step)
		case *deeprecallv1.QueryEvent_LlmCall:
			fmt.Printf("  model %s calls %s\n", e.LlmCall.Model, strings.Join(e.LlmCall.ToolCalls, ", "))
		case *deeprecallv1.QueryEvent_Search:
			hits := make([]string, 0, len(e.Search.Hits))
			for _, hit := range e.Search.Hits {
				hits = append(hits, fmt.Sprintf("%s (%.4f)", hit.Id, hit.Score))
			}
			fmt.Printf("  search %q: %s\n", e.Search.Query, strings.Join(hits, ", "))
		case *deeprecallv1.QueryEvent_BudgetWarning:
			fmt.Printf("  budget: %s\n", e.BudgetWarning.Message)
		case *deeprecallv1.QueryEvent_Result:
			result = e.Result
		}
	}
	if result == nil {
		return nil, errors.New("the query stream ended without a result")
	}
	return result, nil
}

func document(id, content, kind string) *deeprecallv1.Document {
	meta, err := structpb.NewStruct(map[string]interface{}{"kind": kind})
	if err != nil {
		panic(err)
	}
	return &deeprecallv1.Document{Id: id, Content: content, Metadata: meta}
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
