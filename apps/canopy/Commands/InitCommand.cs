using System.CommandLine;
using Canopy.Client;
using Canopy.Rpc;

namespace Canopy.Cli.Commands;

/// <summary><c>canopy init --host H</c>: initialises a new cluster (once, after its servers started).</summary>
public static class InitCommand
{
    public static Command Build()
    {
        var host = ClusterCli.HostOption();
        var cmd = new Command("init", "Initialise a new cluster whose servers were started with --join (run once).") { host };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            try
            {
                await client.InitAsync(ct);
            }
            catch (CanopyRpcException ex) when (ex.Code == RpcErrorCode.AlreadyInitialized)
            {
                throw new CliException(ex.Message.Length > 0 ? ex.Message : "the cluster is already initialised");
            }

            output.WriteLine("cluster initialised");
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
