import Accelerators
import ArgumentParser
import CKVMBench
import Foundation
import GuestMemory
import KVM

/// `swiftkvm bench`: the measurements the project tracks, each a ratio or a
/// rate taken in one run.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure SwiftKVM: the API's exit overhead, the soft CPU's speed, and a Linux boot beside QEMU.",
        subcommands: [PortIOBench.self, CPUBench.self, BootBench.self],
        defaultSubcommand: PortIOBench.self)
}

/// `swiftkvm bench port-io`: the cost of a port-I/O exit handled through the
/// Swift API against the same loop written in C on raw ioctls, measured
/// side by side in one process on one vCPU.
struct PortIOBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "port-io",
        abstract: "Port-I/O exits through the Swift API against raw ioctls in C, on the host's /dev/kvm.")

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

/// `swiftkvm bench cpu`: guest instructions per second of a CPU-bound loop
/// (integer arithmetic, a load, a store, a call and a return, a branch) in
/// flat 32-bit protected mode, on the chosen accelerator.
struct CPUBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu",
        abstract: "Guest instructions per second of a CPU-bound loop (use a release build).")

    @Option(help: "Loop iterations (9 instructions each).")
    var iterations: UInt32 = 5_000_000

    @Option(help: "The accelerator: soft, or host (which on kvm_pvm emulates ~1 M instructions/s: lower --iterations).")
    var accel: Accelerator = .soft

    @Flag(help: "Also run the same loop under qemu-system-x86_64 -accel tcg (Debian's qemu-system-x86), as a multiboot kernel assembled with binutils.")
    var qemu = false

    /// Instructions per loop iteration: add, mov store, mov load, xor, call, inc, ret, dec, jnz.
    static let instructionsPerIteration = 9

    /// The loop at 0x1000, 32-bit code.
    static func code(iterations: UInt32) -> [UInt8] {
        let count = withUnsafeBytes(of: iterations.littleEndian, Array.init)
        return [0xB9] + count + [          // 1000: mov ecx, iterations
            0xBE, 0x00, 0x20, 0x00, 0x00,  // 1005: mov esi, 0x2000
            0x01, 0xD8,                    // 100a: add eax, ebx
            0x89, 0x06,                    // 100c: mov [esi], eax
            0x8B, 0x56, 0x04,              // 100e: mov edx, [esi+4]
            0x31, 0xC2,                    // 1011: xor edx, eax
            0xE8, 0x06, 0x00, 0x00, 0x00,  // 1013: call 101e
            0x49,                          // 1018: dec ecx
            0x75, 0xEF,                    // 1019: jnz 100a
            0xE6, 0x10,                    // 101b: out 0x10, al
            0xF4,                          // 101d: hlt
            0x43,                          // 101e: inc ebx
            0xC3,                          // 101f: ret
        ]
    }

    func run() throws {
        let hypervisor = try Hypervisor.open(accel)
        let vm = try hypervisor.createVM()
        let memory = try GuestMemoryRegion(size: 0x10000)
        try memory.write(CPUBench.code(iterations: iterations), at: 0x1000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        let vcpu = try vm.createVCPU(id: 0)
        var special = try vcpu.specialRegisters()
        special.cr0 |= 1
        special.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 8, type: 0xB, db: true, g: true)
        let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, db: true, g: true)
        (special.ds, special.es, special.ss, special.fs, special.gs) = (data, data, data, data, data)
        try vcpu.setSpecialRegisters(special)
        var registers = Registers()
        registers.rip = 0x1000
        registers.rsp = 0x8000
        registers.rflags = 2
        try vcpu.setRegisters(registers)

        let start = ContinuousClock.now
        let exit = try vcpu.run()
        let elapsed = (ContinuousClock.now - start).seconds
        guard case .io(let io) = exit, io.port == 0x10 else {
            throw ValidationError("the benchmark loop ended with \(exit) instead of its port write")
        }
        let instructions = Double(iterations) * Double(CPUBench.instructionsPerIteration) + 2
        print("CPU-bound loop on \(hypervisor.accelerator): \(iterations) iterations, \(Int(instructions)) instructions")
        print(String(format: "  %.3f s, %.1f M guest instructions/s", elapsed, instructions / elapsed / 1e6))
        if qemu {
            let qemuSeconds = try QEMULoop.seconds(iterations: iterations)
            let qemuRate = Double(iterations) * Double(CPUBench.instructionsPerIteration) / qemuSeconds
            print(String(format: "qemu-system-x86_64 -accel tcg, same loop: %.3f s (start-up subtracted), %.1f M guest instructions/s", qemuSeconds, qemuRate / 1e6))
            print(String(format: "  ratio %.2f (QEMU TCG / \(hypervisor.accelerator), instructions per second)", qemuRate / (instructions / elapsed)))
        }
    }
}

/// The CPU benchmark's loop as a multiboot kernel for QEMU: QEMU's loader
/// enters it in flat 32-bit protected mode, as `CPUBench` starts its own
/// guest, and it leaves through isa-debug-exit. Start-up is measured with a
/// one-iteration run and subtracted.
enum QEMULoop {
    static let source = """
        .code32
        .text
        .globl _start
        .align 4
            .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)
        _start:
            mov $ITERATIONS, %ecx
            mov $0x200000, %esi
            mov $0x300000, %esp
        1:  add %ebx, %eax
            mov %eax, (%esi)
            mov 4(%esi), %edx
            xor %eax, %edx
            call 2f
            dec %ecx
            jnz 1b
            mov $0, %al
            out %al, $0xf4
            hlt
        2:  inc %ebx
            ret

        """

    static func seconds(iterations: UInt32) throws -> Double {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-qemu-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let sourcePath = directory.appendingPathComponent("loop.S").path
        try source.write(toFile: sourcePath, atomically: true, encoding: .utf8)
        func kernel(_ count: UInt32) throws -> String {
            let object = directory.appendingPathComponent("loop\(count).o").path
            let elf = directory.appendingPathComponent("loop\(count).elf").path
            try tool("as", ["--32", "--defsym", "ITERATIONS=\(count)", sourcePath, "-o", object])
            try tool("ld", ["-m", "elf_i386", "-Ttext=0x100000", "-o", elf, object])
            return elf
        }
        func run(_ elf: String) throws -> Double {
            let start = ContinuousClock.now
            // isa-debug-exit makes QEMU exit with (value << 1) | 1: 1 for the loop's 0.
            try tool("qemu-system-x86_64", [
                "-accel", "tcg", "-display", "none", "-no-reboot", "-nodefaults", "-m", "64",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel", elf,
            ], expectedStatus: 1)
            return (ContinuousClock.now - start).seconds
        }
        let startUp = try run(kernel(1))
        return try run(kernel(iterations)) - startUp
    }

    private static func tool(_ name: String, _ arguments: [String], expectedStatus: Int32 = 0) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [name] + arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == expectedStatus else {
            throw ValidationError("\(name) exited with \(process.terminationStatus) (is Debian's qemu-system-x86 / binutils installed?)")
        }
    }
}
