// Tests of PeerTransport on 127.0.0.1: ordered delivery among three servers, one connection per pair under
// simultaneous dials, reconnection to a restarted peer, rejection of bad handshakes and oversized frames without
// disturbing other peers, and the bounded queue. All waits are conditions with deadlines.
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Xunit.Abstractions;

namespace Canopy.Transport.Tests;

public sealed class PeerTransportTests(ITestOutputHelper output) : LoggedTest(output)
{
    [Fact]
    public async Task ThreeTransportsExchangeFramesInOrder()
    {
        const int PerPair = 3000;
        await using var n1 = TestNode.Start(1, Logs);
        await using var n2 = TestNode.Start(2, Logs);
        await using var n3 = TestNode.Start(3, Logs);
        TestNode[] nodes = [n1, n2, n3];
        TestNode.Link(nodes);

        // Everyone sends to everyone at once, so dials cross; payload sizes vary (some above the receive buffer).
        await Task.WhenAll(nodes.Select(from => Task.Run(() =>
        {
            for (var i = 0; i < PerPair; i++)
            {
                foreach (var to in nodes.Where(n => n != from))
                {
                    Assert.True(from.Transport.TrySend(to.Id, (byte)from.Id, Payload(i, i % 500 == 0 ? 200_000 : i % 37)));
                }
            }
        })));

        await Wait.Until(() => nodes.All(n => n.Frames.Count == 2 * PerPair), "every frame to arrive");
        foreach (var to in nodes)
        {
            foreach (var from in nodes.Where(n => n != to))
            {
                var got = to.From(from.Id);
                Assert.Equal(PerPair, got.Count);
                for (var i = 0; i < PerPair; i++)
                {
                    Assert.Equal(i, BinaryPrimitives.ReadInt32LittleEndian(got[i]));
                    Assert.Equal(4 + (i % 500 == 0 ? 200_000 : i % 37), got[i].Length);
                }
            }

            Assert.All(to.Frames, f => Assert.Equal((byte)f.From, f.Kind));
            var c = to.Counters;
            Assert.Equal(2, c.ConnectedPeers);
            Assert.Equal(2 * PerPair, c.FramesSent);
            Assert.Equal(0, c.FramesDropped + c.FramesLost + c.ProtocolErrors);
        }

        // Exactly one connection per pair: three connections in all, each seen from both ends.
        Assert.Equal(3, nodes.Sum(n => n.Counters.ConnectionsDialed));
        Assert.Equal(3, nodes.Sum(n => n.Counters.ConnectionsAccepted));
    }

    [Fact]
    public async Task OneConnectionPerPairWhenBothDialAtOnce()
    {
        var collisions = 0;
        for (var round = 0; round < 20; round++)
        {
            await using var a = TestNode.Start(1, Logs);
            await using var b = TestNode.Start(2, Logs);
            TestNode.Link(a, b);

            // Two dedicated threads meet at a barrier, then both send at once (pool threads could starve here).
            using var go = new Barrier(2);
            await Task.WhenAll(
                Task.Factory.StartNew(() => SendBurst(a, b.Id, go), TaskCreationOptions.LongRunning),
                Task.Factory.StartNew(() => SendBurst(b, a.Id, go), TaskCreationOptions.LongRunning));

            await Wait.Until(() => a.Frames.Count == 100 && b.Frames.Count == 100, "both bursts to arrive");
            Assert.Equal(Enumerable.Range(0, 100), a.From(b.Id).Select(p => BinaryPrimitives.ReadInt32LittleEndian(p)));
            Assert.Equal(Enumerable.Range(0, 100), b.From(a.Id).Select(p => BinaryPrimitives.ReadInt32LittleEndian(p)));

            var (ca, cb) = (a.Counters, b.Counters);
            Assert.Equal(1, ca.ConnectedPeers);
            Assert.Equal(1, cb.ConnectedPeers);
            Assert.Equal(1, ca.ConnectionsDialed + cb.ConnectionsDialed);
            Assert.Equal(1, ca.ConnectionsAccepted + cb.ConnectionsAccepted);
            Assert.Equal(0, ca.FramesLost + cb.FramesLost + ca.FramesDropped + cb.FramesDropped);

            // Both ends agree on the connection: one's local endpoint is the other's remote endpoint.
            var ia = a.Transport.GetConnectionInfo(b.Id)!;
            var ib = b.Transport.GetConnectionInfo(a.Id)!;
            Assert.Equal(ia.LocalEndPoint, ib.RemoteEndPoint);
            Assert.Equal(ia.RemoteEndPoint, ib.LocalEndPoint);
            Assert.NotEqual(ia.DialedByLocal, ib.DialedByLocal);
            collisions += (int)(ca.DuplicateConnectionsRefused + cb.DuplicateConnectionsRefused);
        }

        Output.WriteLine($"simultaneous dials refused as duplicates in 20 rounds: {collisions}");
    }

    [Fact]
    public async Task RestartedPeerIsReconnected()
    {
        await using var a = TestNode.Start(1, Logs);
        var b = TestNode.Start(2, Logs);
        TestNode.Link(a, b);
        var bEndPoint = b.EndPoint;

        Assert.True(a.Transport.TrySend(2, 0, Payload(0, 10)));
        Assert.True(b.Transport.TrySend(1, 0, Payload(0, 10)));
        await Wait.Until(() => a.Frames.Count == 1 && b.Frames.Count == 1, "first exchange");

        await b.DisposeAsync();
        await Wait.Until(() => !a.Transport.IsConnected(2), "a to see b gone");

        // Sent while b is down: waits in the queue (or is lost with the dead connection; Raft tolerates that).
        a.Transport.TrySend(2, 0, Payload(1, 10));

        await using var b2 = TestNode.Start(2, Logs, endPoint: bEndPoint);
        b2.Transport.SetPeerAddress(1, a.EndPoint);
        Assert.True(a.Transport.TrySend(2, 0, Payload(2, 10)));
        Assert.True(b2.Transport.TrySend(1, 0, Payload(2, 10)));
        await Wait.Until(() => b2.From(1).Any(p => BinaryPrimitives.ReadInt32LittleEndian(p) == 2) && a.Frames.Count == 2, "frames to flow after the restart");

        Assert.True(a.Transport.IsConnected(2));
        await Wait.Until(() => a.Events.Count == 3, "connect, disconnect, reconnect events");
        Assert.Equal([(2UL, true), (2UL, false), (2UL, true)], a.Events.ToArray());
    }

    [Fact]
    public async Task BadHandshakesAndOversizedFramesAreRejectedWhileOthersAreServed()
    {
        var options = new PeerTransportOptions { ClusterSecret = TestNode.Secret, MaxFrameBytes = 1 << 20 };
        await using var a = TestNode.Start(1, Logs, options);
        await using var c = TestNode.Start(3, Logs, options);
        TestNode.Link(a, c);

        // Wrong secret, unsupported version, server id 0, a peer claiming our id: a status byte, then closed.
        foreach (var (hello, expected) in new[]
        {
            (RawClient.Hello(9, secret: "not the secret"), HandshakeStatus.WrongSecret),
            (RawClient.Hello(9, version: 2), HandshakeStatus.UnsupportedVersion),
            (RawClient.Hello(0), HandshakeStatus.BadServerId),
            (RawClient.Hello(1), HandshakeStatus.BadServerId),
        })
        {
            using var raw = await RawClient.ConnectAsync(a.EndPoint);
            await raw.SendAsync(hello);
            Assert.Equal([(byte)expected], await raw.ReadUntilClosedAsync());
        }

        // Garbage: closed without an answer. A silent client: dropped at the handshake timeout.
        using (var garbage = await RawClient.ConnectAsync(a.EndPoint))
        {
            var junk = new byte[Handshake.HelloBytes];
            new Random(5).NextBytes(junk);
            await garbage.SendAsync(junk);
            Assert.Empty(await garbage.ReadUntilClosedAsync());
        }

        await using (var impatient = TestNode.Start(5, Logs, options with { HandshakeTimeout = TimeSpan.FromMilliseconds(300) }))
        {
            using var silent = await RawClient.ConnectAsync(impatient.EndPoint);
            await silent.SendAsync([0x43, 0x4e]);
            Assert.Empty(await silent.ReadUntilClosedAsync());
        }

        // A full transport with the wrong secret never gets through.
        await using var intruder = TestNode.Start(4, Logs, new PeerTransportOptions { ClusterSecret = "other cluster" });
        intruder.Transport.SetPeerAddress(1, a.EndPoint);
        Assert.True(intruder.Transport.TrySend(1, 0, Payload(0, 1)));

        // An authenticated peer sending an oversized frame is disconnected.
        using (var hostile = await RawClient.ConnectAsync(a.EndPoint))
        {
            await hostile.SendAsync(RawClient.Hello(99));
            var header = new byte[5];
            BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)options.MaxFrameBytes + 1);
            await hostile.SendAsync(header);
            var answer = await hostile.ReadUntilClosedAsync();
            Assert.Equal((byte)HandshakeStatus.Accepted, answer[0]);
            Assert.Equal(1 + Handshake.HelloBytes, answer.Length);
        }

        await Wait.Until(() => a.Counters.ProtocolErrors == 1, "the oversized frame to be counted");
        await Wait.Until(() => a.Counters.HandshakesRejected >= 6, "the intruder to be rejected");
        Assert.Empty(a.From(4));
        Assert.Contains(Logs, l => l.Contains("wrong cluster secret", StringComparison.Ordinal));
        Assert.Contains(Logs, l => l.Contains("bad magic", StringComparison.Ordinal));
        Assert.Contains(Logs, l => l.Contains("handshake timed out", StringComparison.Ordinal));
        Assert.Contains(Logs, l => l.Contains("exceeds the 1048576-byte limit", StringComparison.Ordinal));

        // Meanwhile the real peers are served as usual, both ways.
        for (var i = 0; i < 10; i++)
        {
            Assert.True(a.Transport.TrySend(3, 1, Payload(i, 100)));
            Assert.True(c.Transport.TrySend(1, 1, Payload(i, 100)));
        }

        await Wait.Until(() => a.From(3).Count == 10 && c.From(1).Count == 10, "frames between the real peers");
    }

    [Fact]
    public async Task AcceptorKeepsTheExistingConnectionUnlessThePeerRestarted()
    {
        await using var a = TestNode.Start(1, Logs);
        const int Answer = 1 + Handshake.HelloBytes;

        using var first = await RawClient.ConnectAsync(a.EndPoint);
        await first.SendAsync(RawClient.Hello(9, incarnation: 100));
        Assert.Equal((byte)HandshakeStatus.Accepted, (await first.ReadExactlyAsync(Answer))[0]);
        await Wait.Until(() => a.Transport.IsConnected(9), "the first connection to be active");

        // Same incarnation: a duplicate of a live connection, refused.
        using (var duplicate = await RawClient.ConnectAsync(a.EndPoint))
        {
            await duplicate.SendAsync(RawClient.Hello(9, incarnation: 100));
            Assert.Equal(new[] { (byte)HandshakeStatus.Duplicate }, await duplicate.ReadUntilClosedAsync());
        }

        // New incarnation: the peer restarted; the new connection replaces the old, which is closed.
        using var restarted = await RawClient.ConnectAsync(a.EndPoint);
        await restarted.SendAsync(RawClient.Hello(9, incarnation: 200));
        Assert.Equal((byte)HandshakeStatus.Accepted, (await restarted.ReadExactlyAsync(Answer))[0]);
        Assert.Empty(await first.ReadUntilClosedAsync());
        Assert.True(a.Transport.TrySend(9, 3, Payload(7, 0)));
        Assert.Equal(new byte[] { 4, 0, 0, 0, 3, 7, 0, 0, 0 }, await restarted.ReadExactlyAsync(9));
        Assert.Equal(1, a.Counters.ConnectedPeers);
    }

    [Theory]
    [InlineData(1UL, false)] // we are lower: our dial wins, theirs is refused
    [InlineData(5UL, true)]  // we are higher: we yield to their dial
    public async Task SimultaneousDialsAreBrokenByTheLowerServerId(ulong localId, bool theirsWins)
    {
        var expected = theirsWins ? HandshakeStatus.Accepted : HandshakeStatus.Duplicate;
        // "Peer 2" is a raw listener that reads our hello and never answers, so our dial stays in flight.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        await using var a = TestNode.Start(localId, Logs);
        a.Transport.SetPeerAddress(2, listener.LocalEndPoint!);
        Assert.True(a.Transport.TrySend(2, 1, Payload(1, 0)));
        using var ourDial = new RawClient(await listener.AcceptAsync());
        await ourDial.ReadExactlyAsync(Handshake.HelloBytes);

        // Meanwhile peer 2 dials us.
        using var theirDial = await RawClient.ConnectAsync(a.EndPoint);
        await theirDial.SendAsync(RawClient.Hello(2));
        var status = (HandshakeStatus)(await theirDial.ReadExactlyAsync(1))[0];
        Assert.Equal(expected, status);
        if (theirsWins)
        {
            // Peer 2 refuses our dial as the duplicate; the queued frame goes over the connection it dialed.
            await theirDial.ReadExactlyAsync(Handshake.HelloBytes);
            await ourDial.SendAsync([(byte)HandshakeStatus.Duplicate]);
            Assert.Equal(new byte[] { 4, 0, 0, 0, 1, 1, 0, 0, 0 }, await theirDial.ReadExactlyAsync(9));
            Assert.Equal(1, a.Counters.ConnectionsAccepted);
        }
        else
        {
            Assert.Empty(await theirDial.ReadUntilClosedAsync());
            Assert.Equal(1, a.Counters.DuplicateConnectionsRefused);
        }
    }

    [Fact]
    public async Task BoundedQueueDropsWhileThePeerIsDownThenDelivers()
    {
        // A port with nothing listening (for now).
        IPEndPoint downEndPoint;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            downEndPoint = (IPEndPoint)probe.LocalEndPoint!;
        }

        await using var a = TestNode.Start(1, Logs, new PeerTransportOptions { ClusterSecret = TestNode.Secret, SendQueueFrames = 16 });
        a.Transport.SetPeerAddress(2, downEndPoint);
        for (var i = 0; i < 16; i++)
        {
            Assert.True(a.Transport.TrySend(2, 7, Payload(i, 8)));
        }

        Assert.False(a.Transport.TrySend(2, 7, Payload(16, 8)));
        Assert.False(a.Transport.TrySend(42, 7, Payload(0, 8))); // unknown peer
        Assert.Equal(2, a.Counters.FramesDropped);

        await using var b = TestNode.Start(2, Logs, endPoint: downEndPoint);
        await Wait.Until(() => b.Frames.Count == 16, "the queued frames once the peer is up");
        Assert.Equal(Enumerable.Range(0, 16), b.From(1).Select(p => BinaryPrimitives.ReadInt32LittleEndian(p)));
        Assert.All(b.Frames, f => Assert.Equal(7, f.Kind));
    }

    [Fact]
    public async Task OversizedSendIsACallerError()
    {
        await using var a = TestNode.Start(1, Logs, new PeerTransportOptions { ClusterSecret = TestNode.Secret, MaxFrameBytes = 1000 });
        a.Transport.SetPeerAddress(2, new IPEndPoint(IPAddress.Loopback, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Transport.TrySend(2, 0, new byte[1001]));
        Assert.True(a.Transport.TrySend(2, 0, new byte[1000]));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Transport.SetPeerAddress(1, a.EndPoint));
    }

    private static void SendBurst(TestNode from, ulong to, Barrier go)
    {
        go.SignalAndWait();
        for (var i = 0; i < 100; i++)
        {
            Assert.True(from.Transport.TrySend(to, 0, Payload(i, 16)));
        }
    }

    private static byte[] Payload(int seq, int extra)
    {
        var p = new byte[4 + extra];
        BinaryPrimitives.WriteInt32LittleEndian(p, seq);
        p.AsSpan(4).Fill((byte)seq);
        return p;
    }
}
