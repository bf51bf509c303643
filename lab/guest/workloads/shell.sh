# Interactive shell on the console (job control via cttyhack).
exec setsid cttyhack sh
