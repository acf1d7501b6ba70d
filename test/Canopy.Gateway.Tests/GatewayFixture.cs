// One real single-node server (RocksDB, Raft, leases, transactions) with its HTTP port, shared by the class; small
// gateway limits so the limit tests need few messages.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using Canopy.Client;
using Canopy.Gateway;
using Canopy.Server;
using Canopy.Variant;

namespace Canopy.Gateway.Tests;

public sealed class GatewayFixture : IAsyncLifetime
{
    public const int MaxFrameBytes = 64 * 1024;
    public const int RateBurst = 20;

    private readonly string _root = Path.Combine(Path.GetTempPath(), $"canopy-gw-{Guid.NewGuid().ToString("N")[..10]}");

    public CanopyServer Server { get; private set; } = null!;

    public Uri WsUri { get; private set; } = null!;

    public Uri HttpUri { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var rpcPort = FreePort();
        var httpPort = FreePort();
        var address = $"127.0.0.1:{rpcPort}";
        Server = await CanopyServer.StartAsync(new ServerOptions
        {
            StoreDirectory = _root,
            ListenAddress = address,
            ListenEndPoint = new IPEndPoint(IPAddress.Loopback, rpcPort),
            HttpEndPoint = new IPEndPoint(IPAddress.Loopback, httpPort),
            SingleNode = true,
            Gateway = new GatewayOptions { MaxFrameBytes = MaxFrameBytes, RateBurst = RateBurst, RatePerSecond = 5 },
        });
        WsUri = new Uri($"ws://127.0.0.1:{httpPort}/ws");
        HttpUri = new Uri($"http://127.0.0.1:{httpPort}/");

        await using var client = await CanopyClient.ConnectAsync([address]);
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var ranges = await client.ListRangesAsync();
            if (ranges.Count >= 2 && ranges.All(r => r.Leaseholder != 0))
            {
                break;
            }

            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), "no leaseholders within 30 s");
            await Task.Delay(50);
        }
    }

    public async Task DisposeAsync()
    {
        await Server.DisposeAsync();
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public async Task<WsClient> ConnectAsync(bool hello = true)
    {
        var c = await WsClient.ConnectAsync(WsUri);
        if (hello)
        {
            var welcome = await c.HelloAsync(GatewayOptions.DevelopmentToken, GatewayProtocol.Version);
            Assert.Equal("welcome", welcome.Str("op"));
        }

        return c;
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}

/// <summary>A test client: one ClientWebSocket, Variant messages, a 10 s limit on every wait.</summary>
public sealed class WsClient : IAsyncDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    private readonly ClientWebSocket _ws = new();
    private long _nextId;

    public WebSocket Socket => _ws;

    public static async Task<WsClient> ConnectAsync(Uri uri)
    {
        var c = new WsClient();
        using var t = new CancellationTokenSource(Wait);
        await c._ws.ConnectAsync(uri, t.Token);
        return c;
    }

    public Task<VariantDictionary> HelloAsync(string token, int version) =>
        RoundTripAsync(new VariantDictionary(("op", "hello"), ("version", version), ("token", token)));

    public async Task SendRawAsync(byte[] bytes, WebSocketMessageType type = WebSocketMessageType.Binary)
    {
        using var t = new CancellationTokenSource(Wait);
        await _ws.SendAsync(bytes, type, endOfMessage: true, t.Token);
    }

    public Task SendAsync(VariantDictionary message) => SendRawAsync(VariantCodec.Encode(message));

    /// <summary>The next message, or null when the server closed (then <see cref="WebSocket.CloseStatus"/> says why).</summary>
    public async Task<VariantDictionary?> ReceiveAsync()
    {
        using var t = new CancellationTokenSource(Wait);
        var buffer = new byte[1 << 20];
        var count = 0;
        while (true)
        {
            var r = await _ws.ReceiveAsync(buffer.AsMemory(count), t.Token);
            if (r.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }

            count += r.Count;
            if (r.EndOfMessage)
            {
                return (VariantDictionary)VariantCodec.Decode(buffer.AsSpan(0, count));
            }
        }
    }

    public async Task<VariantDictionary> RoundTripAsync(VariantDictionary message)
    {
        await SendAsync(message);
        return await ReceiveAsync() ?? throw new InvalidOperationException($"closed: {_ws.CloseStatus} {_ws.CloseStatusDescription}");
    }

    /// <summary>Sends {"op": op, "id": next, ...fields} and returns the answer with that id.</summary>
    public async Task<VariantDictionary> CallAsync(string op, params (string Key, GodotVariant Value)[] fields)
    {
        var id = Interlocked.Increment(ref _nextId);
        var entries = new List<(GodotVariant, GodotVariant)> { ("op", op), ("id", id) };
        entries.AddRange(fields.Select(f => ((GodotVariant)f.Key, f.Value)));
        await SendAsync(new VariantDictionary([.. entries]));
        while (true)
        {
            var m = await ReceiveAsync() ?? throw new InvalidOperationException($"closed: {_ws.CloseStatus} {_ws.CloseStatusDescription}");
            if (m.TryGetValue("id", out var got) && got is VariantInt i && i.Value == id)
            {
                return m;
            }
        }
    }

    /// <summary>Reads until the server's close frame (answering it); returns its status.</summary>
    public async Task<WebSocketCloseStatus?> ExpectCloseAsync()
    {
        while (await ReceiveAsync() is not null)
        {
        }

        using var t = new CancellationTokenSource(Wait);
        if (_ws.State == WebSocketState.CloseReceived)
        {
            await _ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "ok", t.Token);
        }

        return _ws.CloseStatus;
    }

    public async ValueTask DisposeAsync()
    {
        if (_ws.State == WebSocketState.Open)
        {
            using var t = new CancellationTokenSource(Wait);
            try
            {
                await _ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", t.Token);
            }
            catch (Exception e) when (e is WebSocketException or OperationCanceledException)
            {
            }
        }

        _ws.Dispose();
    }
}

public static class VariantTestExtensions
{
    public static string? Str(this VariantDictionary d, string key) =>
        d.TryGetValue(key, out var v) ? v switch { VariantString s => s.Value, VariantStringName s => s.Value, _ => null } : null;

    public static long? Int(this VariantDictionary d, string key) => d.TryGetValue(key, out var v) && v is VariantInt i ? i.Value : null;

    public static byte[]? Bytes(this VariantDictionary d, string key) => d.TryGetValue(key, out var v) && v is PackedByteArray p ? [.. p.Items] : null;

    public static bool? Bool(this VariantDictionary d, string key) => d.TryGetValue(key, out var v) && v is VariantBool b ? b.Value : null;
}
