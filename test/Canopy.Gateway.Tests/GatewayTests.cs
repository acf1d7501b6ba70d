// The WebSocket gateway against a real server: handshake, typed errors, limits, transactions (docs/protocol.md).
using System.Net.WebSockets;
using System.Text;
using Canopy.Variant;

namespace Canopy.Gateway.Tests;

public sealed class GatewayTests(GatewayFixture fx) : IClassFixture<GatewayFixture>
{
    private static PackedByteArray B(string s) => new(Encoding.UTF8.GetBytes(s));

    private static string UniqueKey(string prefix) => $"{prefix}-{Guid.NewGuid():N}";

    /// <summary>The server still serves a fresh connection.</summary>
    private async Task AssertServerUpAsync()
    {
        await using var c = await fx.ConnectAsync();
        Assert.Equal("result", (await c.CallAsync("ping")).Str("op"));
        using var http = new HttpClient { BaseAddress = fx.HttpUri };
        Assert.Equal("ok", await http.GetStringAsync(new Uri("health", UriKind.Relative)));
    }

    [Fact]
    public async Task Handshake_then_ping_echoes_the_id()
    {
        await using var c = await WsClient.ConnectAsync(fx.WsUri);
        var welcome = await c.RoundTripAsync(new VariantDictionary(("op", "hello"), ("id", 99L), ("version", 1), ("token", GatewayOptions.DevelopmentToken)));
        Assert.Equal("welcome", welcome.Str("op"));
        Assert.Equal(1, welcome.Int("version"));
        Assert.Equal(99, welcome.Int("id"));
        Assert.True(Guid.TryParse(welcome.Str("session"), out _));
        Assert.Equal(GatewayFixture.MaxFrameBytes, welcome.Int("max_frame_bytes"));

        var pong = await c.CallAsync("ping");
        Assert.Equal("result", pong.Str("op"));
        Assert.Equal(true, pong.Bool("pong"));
    }

    [Fact]
    public async Task Wrong_token_is_unauthenticated_and_closed()
    {
        await using var c = await WsClient.ConnectAsync(fx.WsUri);
        var e = await c.HelloAsync("not-the-token", 1);
        Assert.Equal("error", e.Str("op"));
        Assert.Equal("unauthenticated", e.Str("code"));
        Assert.Equal(WebSocketCloseStatus.PolicyViolation, await c.ExpectCloseAsync());
        await AssertServerUpAsync();
    }

    [Fact]
    public async Task A_request_before_hello_is_refused_and_closed()
    {
        await using var c = await WsClient.ConnectAsync(fx.WsUri);
        var e = await c.RoundTripAsync(new VariantDictionary(("op", "txn_begin"), ("id", 1)));
        Assert.Equal("bad_request", e.Str("code"));
        Assert.Equal(1, e.Int("id"));
        Assert.Equal(WebSocketCloseStatus.ProtocolError, await c.ExpectCloseAsync());
    }

    [Fact]
    public async Task Unsupported_version_is_refused_with_the_supported_list()
    {
        await using var c = await WsClient.ConnectAsync(fx.WsUri);
        var e = await c.HelloAsync(GatewayOptions.DevelopmentToken, 2);
        Assert.Equal("unsupported_version", e.Str("code"));
        Assert.True(e.TryGetValue("supported", out var s) && s is VariantArray { Count: 1 } a && a[0] is VariantInt { Value: 1 });
        Assert.Equal(WebSocketCloseStatus.ProtocolError, await c.ExpectCloseAsync());
    }

    [Fact]
    public async Task Malformed_messages_get_bad_request_and_the_connection_stays_usable()
    {
        await using var bystander = await fx.ConnectAsync();
        await using var c = await fx.ConnectAsync();
        var random = new Random(1234);
        var junk = new byte[200];
        random.NextBytes(junk);
        junk[0] = 0xFF; // not a Variant type

        await c.SendRawAsync(junk);
        var e = await c.ReceiveAsync();
        Assert.NotNull(e);
        Assert.Equal("bad_request", e.Str("code"));
        Assert.True(e.TryGetValue("id", out var id) && id is VariantNil);

        // A valid Variant that is not a dictionary, a text frame, a message without id, an unknown op, a wrong type.
        await c.SendRawAsync(VariantCodec.Encode(42));
        Assert.Equal("bad_request", (await c.ReceiveAsync())!.Str("code"));
        await c.SendRawAsync(Encoding.UTF8.GetBytes("{\"op\":\"ping\"}"), WebSocketMessageType.Text);
        Assert.Equal("bad_request", (await c.ReceiveAsync())!.Str("code"));
        Assert.Equal("bad_request", (await c.RoundTripAsync(new VariantDictionary(("op", "ping")))).Str("code"));
        Assert.Equal("bad_request", (await c.CallAsync("fly")).Str("code"));
        var typed = await c.CallAsync("txn_get", ("txn", "x"), ("key", "a String, not bytes"));
        Assert.Equal("bad_request", typed.Str("code"));
        Assert.Contains("key", typed.Str("message"), StringComparison.Ordinal);

        Assert.Equal("result", (await c.CallAsync("ping")).Str("op"));
        Assert.Equal("result", (await bystander.CallAsync("ping")).Str("op"));
    }

    [Fact]
    public async Task Oversized_message_is_too_large_and_closes_only_that_connection()
    {
        await using var bystander = await fx.ConnectAsync();
        await using var c = await fx.ConnectAsync();
        var big = VariantCodec.Encode(new VariantDictionary(("op", "txn_put"), ("id", 5), ("txn", "x"), ("key", B("k")), ("value", new PackedByteArray(new byte[GatewayFixture.MaxFrameBytes * 2]))));
        var send = c.SendRawAsync(big);
        var e = await c.ReceiveAsync();
        Assert.NotNull(e);
        Assert.Equal("too_large", e.Str("code"));
        Assert.Equal(GatewayFixture.MaxFrameBytes, e.Int("max_frame_bytes"));
        await send;
        Assert.Equal(WebSocketCloseStatus.MessageTooBig, await c.ExpectCloseAsync());

        Assert.Equal("result", (await bystander.CallAsync("ping")).Str("op"));
        await AssertServerUpAsync();
    }

    [Fact]
    public async Task Flooding_is_rate_limited_per_connection()
    {
        await using var bystander = await fx.ConnectAsync();
        await using var c = await fx.ConnectAsync();
        const int n = GatewayFixture.RateBurst * 3;
        for (var i = 1; i <= n; i++)
        {
            await c.SendAsync(new VariantDictionary(("op", "ping"), ("id", i)));
        }

        var seen = new HashSet<long>();
        var limited = 0;
        for (var i = 0; i < n; i++)
        {
            var m = await c.ReceiveAsync();
            Assert.NotNull(m);
            Assert.True(seen.Add(m.Int("id")!.Value), "every id is answered once");
            if (m.Str("code") == "rate_limited")
            {
                limited++;
                Assert.True(m.Int("retry_after_ms") > 0);
            }
            else
            {
                Assert.Equal("result", m.Str("op"));
            }
        }

        // The burst passes (the bucket refills a little meanwhile), the rest is refused.
        Assert.InRange(limited, n - GatewayFixture.RateBurst - 10, n - GatewayFixture.RateBurst);
        Assert.Equal("result", (await bystander.CallAsync("ping")).Str("op"));
    }

    [Fact]
    public async Task Transaction_round_trip()
    {
        await using var c = await fx.ConnectAsync();
        var key = B(UniqueKey("rt"));
        var value = new PackedByteArray(VariantCodec.Encode(new Vector3(1, 2, 3)));

        var begin = await c.CallAsync("txn_begin");
        Assert.Equal("result", begin.Str("op"));
        var txn = begin.Str("txn")!;
        Assert.Equal("result", (await c.CallAsync("txn_put", ("txn", txn), ("key", key), ("value", value))).Str("op"));
        var own = await c.CallAsync("txn_get", ("txn", txn), ("key", key));
        Assert.Equal(true, own.Bool("found"));
        Assert.Equal(value.Items, own.Bytes("value"));
        var commit = await c.CallAsync("txn_commit", ("txn", txn));
        Assert.Equal("committed", commit.Str("status"));
        Assert.False(string.IsNullOrEmpty(commit.Str("commit_ts")));

        // The ended transaction is gone from this connection.
        Assert.Equal("not_found", (await c.CallAsync("txn_get", ("txn", txn), ("key", key))).Str("code"));

        await using var other = await fx.ConnectAsync();
        var t2 = (await other.CallAsync("txn_begin")).Str("txn")!;
        Assert.Equal("not_found", (await c.CallAsync("txn_get", ("txn", t2), ("key", key))).Str("code")); // not c's
        var read = await other.CallAsync("txn_get", ("txn", t2), ("key", key));
        Assert.Equal(value.Items, read.Bytes("value"));
        var missing = await other.CallAsync("txn_get", ("txn", t2), ("key", B(UniqueKey("absent"))));
        Assert.Equal(false, missing.Bool("found"));
        var scan = await other.CallAsync("txn_scan", ("txn", t2), ("start", key), ("limit", 1));
        Assert.True(scan.TryGetValue("rows", out var rows) && rows is VariantArray { Count: 1 });
        Assert.Equal("aborted", (await other.CallAsync("txn_rollback", ("txn", t2))).Str("status"));
    }

    [Fact]
    public async Task Pipelined_requests_of_one_transaction_run_in_order()
    {
        await using var c = await fx.ConnectAsync();
        var key = B(UniqueKey("order"));
        var txn = (await c.CallAsync("txn_begin")).Str("txn")!;
        for (var i = 1; i <= 5; i++)
        {
            await c.SendAsync(new VariantDictionary(("op", "txn_put"), ("id", 100 + i), ("txn", txn), ("key", key), ("value", B($"v{i}"))));
        }

        var get = await c.CallAsync("txn_get", ("txn", txn), ("key", key)); // skips the five put results
        Assert.Equal("v5", Encoding.UTF8.GetString(get.Bytes("value")!));
        Assert.Equal("committed", (await c.CallAsync("txn_commit", ("txn", txn))).Str("status"));
    }

    [Fact]
    public async Task Conflicting_commit_is_reported_aborted()
    {
        await using var a = await fx.ConnectAsync();
        await using var b = await fx.ConnectAsync();
        var key = B(UniqueKey("conflict"));
        var ta = (await a.CallAsync("txn_begin")).Str("txn")!;
        var tb = (await b.CallAsync("txn_begin")).Str("txn")!;
        Assert.Equal(false, (await a.CallAsync("txn_get", ("txn", ta), ("key", key))).Bool("found"));
        Assert.Equal(false, (await b.CallAsync("txn_get", ("txn", tb), ("key", key))).Bool("found"));
        Assert.Equal("result", (await a.CallAsync("txn_put", ("txn", ta), ("key", key), ("value", B("a")))).Str("op"));
        Assert.Equal("committed", (await a.CallAsync("txn_commit", ("txn", ta))).Str("status"));

        // B read the key before A's write committed; its write lands above A's, so its read cannot be refreshed.
        var put = await b.CallAsync("txn_put", ("txn", tb), ("key", key), ("value", B("b")));
        if (put.Str("op") == "error")
        {
            Assert.Equal("txn_aborted", put.Str("code"));
        }
        else
        {
            var commit = await b.CallAsync("txn_commit", ("txn", tb));
            Assert.Equal("aborted", commit.Str("status"));
            Assert.Equal(true, commit.Bool("retryable"));
            Assert.False(string.IsNullOrEmpty(commit.Str("reason")));
        }

        var tc = (await a.CallAsync("txn_begin")).Str("txn")!;
        Assert.Equal("a", Encoding.UTF8.GetString((await a.CallAsync("txn_get", ("txn", tc), ("key", key))).Bytes("value")!));
        await AssertServerUpAsync();
    }

    [Fact]
    public async Task A_connection_closed_mid_transaction_leaves_its_keys_writable()
    {
        var key = B(UniqueKey("orphan"));
        string ta;
        await using (var a = await fx.ConnectAsync())
        {
            ta = (await a.CallAsync("txn_begin")).Str("txn")!;
            Assert.Equal("result", (await a.CallAsync("txn_put", ("txn", ta), ("key", key), ("value", B("never")))).Str("op"));
            Assert.True(fx.Server.HasOpenTransaction(ta));
        }

        // Closing the connection rolls its open transaction back on the server.
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (fx.Server.HasOpenTransaction(ta))
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(10), "the transaction of a closed connection is still open on the gateway");
            await Task.Delay(20);
        }

        // A's transaction never committed: B writes the key and reads its own value back, A's never shows.
        await using var b = await fx.ConnectAsync();
        var tb = (await b.CallAsync("txn_begin")).Str("txn")!;
        Assert.Equal("result", (await b.CallAsync("txn_put", ("txn", tb), ("key", key), ("value", B("b")))).Str("op"));
        Assert.Equal("committed", (await b.CallAsync("txn_commit", ("txn", tb))).Str("status"));
        var tc = (await b.CallAsync("txn_begin")).Str("txn")!;
        Assert.Equal("b", Encoding.UTF8.GetString((await b.CallAsync("txn_get", ("txn", tc), ("key", key))).Bytes("value")!));
    }
}
