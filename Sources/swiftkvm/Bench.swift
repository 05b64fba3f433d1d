import ArgumentParser
import CKVMBench
import Foundation
import GuestMemory
import KVM

/// `swiftkvm bench port-io`: the cost of a port-I/O exit handled through the
/// Swift API against the same loop written in C on raw ioctls, measured
/// side by side in one process on one vCPU.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the KVM API's overhead: port-I/O exits through Swift against raw ioctls in C.")

    @Option(help: "Port-I/O exits per round.")
    var exits = 20_000

    @Option(help: "Rounds of each loop, alternating Swift and C.")
    var rounds = 7

    func validate() throws {
        guard exits > 0, rounds > 0 else { throw ValidationError("--exits and --rounds must be positive") }
    }

    func run() throws {
        let guest = try PortIOBenchGuest()
        // One round of each first, so neither side pays for first faults.
        _ = try guest.swiftRound(exits: min(exits, 1000))
        _ = try guest.cRound(exits: min(exits, 1000))
        var swiftTimes: [Double] = []
        var cTimes: [Double] = []
        for _ in 0..<rounds {
            swiftTimes.append(try guest.swiftRound(exits: exits))
            cTimes.append(try guest.cRound(exits: exits))
        }
        let swiftMedian = median(swiftTimes) / Double(exits) * 1e9
        let cMedian = median(cTimes) / Double(exits) * 1e9
        print("port-I/O exits on \(guest.hypervisor.accelerator): \(rounds) rounds of \(exits), median per exit")
        print(String(format: "  Swift API   %9.0f ns", swiftMedian))
        print(String(format: "  C ioctls    %9.0f ns", cMedian))
        print(String(format: "  ratio       %9.3f  (Swift / C; goal <= 1.05)", swiftMedian / cMedian))
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }
}

/// A real-mode guest that writes to port 0x10 forever: every KVM_RUN ends in
/// one port-I/O exit, so the loop measures the exit round trip alone.
struct PortIOBenchGuest {
    static let port: UInt16 = 0x10
    static let code: [UInt8] = [
        0xE6, 0x10,  // 1: out 0x10, al
        0xFE, 0xC0,  //    inc al
        0xEB, 0xFA,  //    jmp 1b
    ]

    let hypervisor: Hypervisor
    let vm: VirtualMachine
    let vcpu: VCPU

    init() throws {
        hypervisor = try Hypervisor(accelerator: .host)
        vm = try hypervisor.createVM()
        let memory = try GuestMemoryRegion(size: 0x10000)
        try memory.write(PortIOBenchGuest.code, at: 0x1000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        vcpu = try vm.createVCPU(id: 0)
        var special = try vcpu.specialRegisters()
        special.cs.base = 0
        special.cs.selector = 0
        try vcpu.setSpecialRegisters(special)
        var registers = Registers()
        registers.rip = 0x1000
        registers.rflags = 2
        try vcpu.setRegisters(registers)
    }

    /// Seconds for `exits` exits through `VCPU.run()`.
    func swiftRound(exits: Int) throws -> Double {
        let start = ContinuousClock.now
        var checksum: UInt32 = 0
        for _ in 0..<exits {
            guard case .io(let io) = try vcpu.run(), io.port == PortIOBenchGuest.port, io.direction == .out else {
                throw BenchError.unexpectedExit
            }
            checksum &+= io.value
        }
        let elapsed = ContinuousClock.now - start
        withExtendedLifetime(checksum) {}
        return elapsed.seconds
    }

    /// Seconds for `exits` exits through the C loop on the same vCPU.
    func cRound(exits: Int) throws -> Double {
        let start = ContinuousClock.now
        let handled = swiftkvm_bench_port_io_c(
            vcpu.rawDescriptor, UnsafeMutableRawPointer(mutating: vcpu.runMapping.baseAddress), PortIOBenchGuest.port, Int64(exits))
        let elapsed = ContinuousClock.now - start
        guard handled == exits else { throw BenchError.cLoopFailed(handled) }
        return elapsed.seconds
    }
}

enum BenchError: Error, CustomStringConvertible {
    case unexpectedExit
    case cLoopFailed(Int64)

    var description: String {
        switch self {
        case .unexpectedExit: "the benchmark guest left through an exit other than its port write"
        case .cLoopFailed(let code): "the C loop failed with \(code) (negative errno, or -1000 - exit reason)"
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
