// Test helpers: a transport with recorded frames, peer events and log lines; condition waits with deadlines; a raw
// socket client that speaks (or mangles) the handshake. Every wait fails the test with a message at its deadline.
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Xunit.Abstractions;

namespace Canopy.Transport.Tests;

internal sealed class TestNode : IAsyncDisposable
{
    public const string Secret = "test cluster secret";

    private TestNode(ulong id, IPEndPoint endPoint, PeerTransportOptions options, ConcurrentQueue<string> logs)
    {
        Id = id;
        Transport = new PeerTransport(
            id,
            endPoint,
            options,
            (from, kind, payload) => Frames.Enqueue((from, kind, payload)),
            (peer, connected) => Events.Enqueue((peer, connected)),
            line => logs.Enqueue($"{DateTime.UtcNow:HH:mm:ss.fff} {line}"));
    }

    public ulong Id { get; }

    public PeerTransport Transport { get; }

    public IPEndPoint EndPoint => Transport.LocalEndPoint;

    public ConcurrentQueue<(ulong From, byte Kind, byte[] Payload)> Frames { get; } = new();

    public ConcurrentQueue<(ulong Peer, bool Connected)> Events { get; } = new();

    public TransportCounters Counters => Transport.Counters;

    public static TestNode Start(ulong id, ConcurrentQueue<string> logs, PeerTransportOptions? options = null, IPEndPoint? endPoint = null) =>
        new(id, endPoint ?? new IPEndPoint(IPAddress.Loopback, 0), options ?? new PeerTransportOptions { ClusterSecret = Secret }, logs);

    public static void Link(params TestNode[] nodes)
    {
        foreach (var a in nodes)
        {
            foreach (var b in nodes)
            {
                if (a != b)
                {
                    a.Transport.SetPeerAddress(b.Id, b.EndPoint);
                }
            }
        }
    }

    public List<byte[]> From(ulong peer) => Frames.Where(f => f.From == peer).Select(f => f.Payload).ToList();

    public ValueTask DisposeAsync() => Transport.DisposeAsync();
}

internal static class Wait
{
    public static async Task Until(Func<bool> condition, string what, int timeoutMs = 10_000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline)
            {
                Assert.Fail($"timed out after {timeoutMs} ms waiting for {what}");
            }

            await Task.Delay(5);
        }
    }
}

/// <summary>A plain socket speaking the handshake by hand, to test what a buggy or hostile client can do.</summary>
internal sealed class RawClient : IDisposable
{
    public RawClient(Socket socket) => Socket = socket;

    public Socket Socket { get; }

    public static async Task<RawClient> ConnectAsync(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(endPoint);
        return new RawClient(socket);
    }

    public static byte[] Hello(ulong id, string secret = TestNode.Secret, ushort version = Handshake.ProtocolVersion, ulong incarnation = 0x1234)
    {
        var hello = new byte[Handshake.HelloBytes];
        Handshake.WriteHello(hello, id, incarnation, Handshake.ComputeMac(secret));
        hello[4] = (byte)version;
        hello[5] = (byte)(version >> 8);
        return hello;
    }

    public async Task SendAsync(byte[] data)
    {
        var sent = 0;
        while (sent < data.Length)
        {
            sent += await Socket.SendAsync(data.AsMemory(sent), SocketFlags.None);
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes; fails the test on EOF or at the deadline.</summary>
    public async Task<byte[]> ReadExactlyAsync(int count, int timeoutMs = 5_000)
    {
        using var cts = new CancellationTokenSource(timeoutMs);
        var buf = new byte[count];
        var have = 0;
        while (have < count)
        {
            var n = await Socket.ReceiveAsync(buf.AsMemory(have), SocketFlags.None, cts.Token);
            Assert.True(n > 0, $"closed after {have} of {count} bytes");
            have += n;
        }

        return buf;
    }

    /// <summary>Reads until the server closes (EOF or reset); fails the test if it does not within the deadline.</summary>
    public async Task<byte[]> ReadUntilClosedAsync(int timeoutMs = 5_000)
    {
        using var cts = new CancellationTokenSource(timeoutMs);
        var all = new List<byte>();
        var buf = new byte[4096];
        try
        {
            while (true)
            {
                var n = await Socket.ReceiveAsync(buf, SocketFlags.None, cts.Token);
                if (n == 0)
                {
                    return [.. all];
                }

                all.AddRange(buf.AsSpan(0, n));
            }
        }
        catch (SocketException)
        {
            return [.. all]; // reset by the server: closed too
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"the server did not close the connection within {timeoutMs} ms");
            throw;
        }
    }

    public void Dispose() => Socket.Dispose();
}

/// <summary>Collects log lines of a test and prints them at its end (visible with a failing test or detailed logging).</summary>
public abstract class LoggedTest(ITestOutputHelper output) : IDisposable
{
    internal ConcurrentQueue<string> Logs { get; } = new();

    protected ITestOutputHelper Output { get; } = output;

    public void Dispose()
    {
        foreach (var line in Logs)
        {
            Output.WriteLine(line);
        }

        GC.SuppressFinalize(this);
    }
}
